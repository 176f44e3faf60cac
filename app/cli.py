"""The ``edil`` command line (also ``python -m edil.app``): ``edil demo``, ``edil node``, ``edil coordinator``,
``edil chain``, ``edil registry``, ``edil job``, ``edil epoch``, ``edil deploy``, ``edil service``, ``edil gateway``, ``edil explorer``,
``edil federated``,
``edil bench``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import edil
    from edil.app import _deploy_cli as deploy_cli
    from edil.app import _explorer as explorer_cli
    from edil.app import _fs_cli as fs_cli
    from edil.app import _gateway_cli as gateway_cli
    from edil.app import _node_cli as node_cli
    from edil.app import _ops_cli as ops_cli
    from edil.app import _oracle_cli as oracle_cli

    parser = argparse.ArgumentParser(prog="edil", description="EDIL: private, verifiable AI compute on edge nodes")
    parser.add_argument("--version", action="version", version=f"edil {edil.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the end-to-end demo on embedded defaults")
    demo.add_argument("--no-masked", action="store_true", help="skip the in-process Masked step")
    demo.add_argument("--no-he", action="store_true", help="skip the homomorphic schemes")
    demo.add_argument("--no-federated", action="store_true", help="skip federated training")
    demo.add_argument("--no-runtime", action="store_true", help="skip the edge runtime and chain steps")
    demo.add_argument("--chain", metavar="URL", default=None, help="EVM JSON-RPC URL (anvil, a dev chain); default: an anvil the demo starts (nats executor), else the in-process EVM")
    demo.add_argument(
        "--chain-key", metavar="HEX", action="append", default=None,
        help="funded private key for --chain (repeatable; default: $EDIL_CHAIN_KEY, or anvil's dev key on loopback)",
    )
    demo.add_argument(
        "--executor", choices=("local", "ray", "nats"), default=None,
        help="where the edge nodes run (nats: nats-server, node daemons and oracles as processes on loopback; default: nats when nats-server is installed, else local)",
    )
    demo.add_argument("--ray-address", metavar="ADDR", default=None, help="Ray cluster address for --executor ray")
    demo.add_argument("--samples", type=int, default=None, help="limit the runtime step's samples per workload")
    demo.add_argument(
        "--serve", nargs="?", type=int, const=8090, default=None, metavar="PORT",
        help="after the runtime step, keep the network up and serve the explorer on 127.0.0.1:PORT (default 8090) until Ctrl-C",
    )
    node_cli.add_parser(sub)
    node_cli.add_coordinator_parser(sub)
    ops_cli.add_parsers(sub)
    deploy_cli.add_parsers(sub)
    fs_cli.add_parser(sub)
    gateway_cli.add_parser(sub)
    explorer_cli.add_parser(sub)
    oracle_cli.add_parser(sub)
    fed = sub.add_parser("federated", help="federated training on digits: 3 nodes, load 25/50/25, secure aggregation")
    fed.add_argument("--rounds", type=int, default=20, help="federated rounds")
    bench = sub.add_parser("bench", help="run the benchmarks (writes benchmarks/results/)")
    bench.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from edil import EdilError
        from edil.app._demo import run_demo
        from edil.app._embedded import default_executor

        if args.ray_address and args.executor != "ray":
            parser.error("--ray-address needs --executor ray")
        if args.samples is not None and args.samples < 1:
            parser.error("--samples must be at least 1")
        if args.serve is not None and (args.no_runtime or not 0 <= args.serve <= 65535):
            parser.error("--serve needs the runtime step and a port in 0..65535")
        keys = args.chain_key or ([os.environ["EDIL_CHAIN_KEY"]] if os.environ.get("EDIL_CHAIN_KEY") else None)
        options = {"chain_url": args.chain, "chain_keys": keys, "executor": args.executor or default_executor(), "ray_address": args.ray_address, "samples": args.samples,
                   "serve_port": args.serve}
        try:
            run_demo(
                with_masked=not args.no_masked, with_he=not args.no_he, with_federated=not args.no_federated,
                with_runtime=not args.no_runtime, runtime_options=options,
            )
        except EdilError as exc:
            print(f"edil demo: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what the demo started is stopped by then
            print("edil demo: interrupted; every process it started is stopped", file=sys.stderr)
            return 130
        return 0
    if args.command == "node":
        return node_cli.main(args)
    if args.command == "coordinator":
        return node_cli.coordinator_main(args)
    if args.command in ops_cli.COMMANDS:
        return ops_cli.main(args)
    if args.command in deploy_cli.COMMANDS:
        return deploy_cli.main(args)
    if args.command == "fs":
        return fs_cli.main(args)
    if args.command == "gateway":
        return gateway_cli.main(args)
    if args.command == "explorer":
        return explorer_cli.main(args)
    if args.command == "oracle":
        return oracle_cli.main(args)
    if args.command == "federated":
        from edil.app._demo import format_table
        from edil.app._federated_demo import run_federated_demo

        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        print(format_table(run_federated_demo(print, rounds=args.rounds)))
        return 0
    if args.command == "bench":
        # The benchmarks are a folder of the source checkout, not part of the installed packages:
        # run them as their own program from there rather than importing them.
        if not (Path.cwd() / "benchmarks" / "__main__.py").is_file():
            print("edil bench runs in a source checkout: cd to the folder that holds benchmarks/", file=sys.stderr)
            return 2
        return subprocess.run([sys.executable, "-m", "benchmarks", *(["--quick"] if args.quick else [])], check=False).returncode
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
