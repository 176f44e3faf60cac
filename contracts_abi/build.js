#!/usr/bin/env node
// Compile contracts_abi/src/*.sol with the pinned npm `solc` and write one artifact per contract
// to contracts_abi/artifacts/<Name>.json (ABI, bytecode, compiler version, settings, source hash).
//
//   node contracts_abi/build.js           regenerate the artifacts
//   node contracts_abi/build.js --check   recompile in memory; exit 1 if the committed artifacts drift
//
// Python loads the artifacts and never needs the compiler at run time.
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const solc = require("solc");

const ROOT = __dirname;
const SRC = path.join(ROOT, "src");
const OUT = path.join(ROOT, "artifacts");
const PINNED = require(path.join(ROOT, "..", "package.json")).devDependencies.solc;
// Contracts deployed by the Python client; the rest of the sources are libraries.
const DEPLOYABLE = [
  "NodeRegistry",
  "AvailabilityLedger",
  "PoAIVerifier",
  "EdilToken",
  "JobEscrow",
  "StakeManager",
  "AvailabilityRewards",
  "OperatorLicence",
];
// Imports of "@openzeppelin/..." resolve to the pinned npm package (package.json).
const NODE_MODULES = path.join(ROOT, "..", "node_modules");
const OPENZEPPELIN = require(path.join(ROOT, "..", "package.json")).devDependencies["@openzeppelin/contracts"];
const SETTINGS = {
  // Set explicitly: cancun runs on py-evm 0.12 (in-process EVM), anvil and current L2s.
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 10000 },
  metadata: { bytecodeHash: "none", appendCBOR: false },
};

// sha256 over "<file>\0<content>\0" for the sources in name order; Python recomputes it.
function sourceHash(sources) {
  const h = crypto.createHash("sha256");
  for (const name of Object.keys(sources).sort()) {
    h.update(name, "utf8");
    h.update("\0");
    h.update(sources[name].content, "utf8");
    h.update("\0");
  }
  return h.digest("hex");
}

function compile() {
  const version = solc.version();
  if (!version.startsWith(PINNED + "+")) {
    throw new Error(`solc ${version} is installed but package.json pins ${PINNED}; run npm install`);
  }
  const sources = {};
  for (const file of fs.readdirSync(SRC).filter((f) => f.endsWith(".sol")).sort()) {
    sources[file] = { content: fs.readFileSync(path.join(SRC, file), "utf8") };
  }
  const input = {
    language: "Solidity",
    sources,
    settings: {
      ...SETTINGS,
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const installedOz = require(path.join(NODE_MODULES, "@openzeppelin", "contracts", "package.json")).version;
  if (installedOz !== OPENZEPPELIN) {
    throw new Error(`@openzeppelin/contracts ${installedOz} is installed but package.json pins ${OPENZEPPELIN}; run npm install`);
  }
  const findImports = (name) => {
    if (!name.startsWith("@openzeppelin/contracts/")) return { error: `import ${name} is not remapped` };
    const file = path.join(NODE_MODULES, name);
    return fs.existsSync(file) ? { contents: fs.readFileSync(file, "utf8") } : { error: `${name} not found` };
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) throw new Error(`solc reported ${errors.length} error(s)`);

  const hash = sourceHash(sources);
  const artifacts = {};
  for (const name of DEPLOYABLE) {
    const file = `${name}.sol`;
    const c = output.contracts[file] && output.contracts[file][name];
    if (!c) throw new Error(`contract ${name} not found in ${file}`);
    artifacts[name] = {
      contractName: name,
      sourceName: `src/${file}`,
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      compiler: { name: "solc-js", version },
      openzeppelin: OPENZEPPELIN,
      settings: SETTINGS,
      sourceHash: hash,
    };
  }
  return artifacts;
}

function render(artifact) {
  return JSON.stringify(artifact, null, 2) + "\n";
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compile();
  let drift = 0;
  if (!check) fs.mkdirSync(OUT, { recursive: true });
  for (const [name, artifact] of Object.entries(artifacts)) {
    const target = path.join(OUT, `${name}.json`);
    const text = render(artifact);
    if (check) {
      const committed = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : null;
      if (committed !== text) {
        process.stderr.write(`drift: ${path.relative(process.cwd(), target)} differs from a fresh compile\n`);
        drift += 1;
      }
    } else {
      fs.writeFileSync(target, text);
      process.stdout.write(`wrote ${path.relative(process.cwd(), target)}\n`);
    }
  }
  if (check && drift) process.exit(1);
  if (check) process.stdout.write(`artifacts match sources (${Object.keys(artifacts).length} contracts)\n`);
}

main();
