"""Chain fixtures shared by the contract tests: an in-process EVM and a real anvil node.

``chain`` is parametrized over both backends (module scope: one chain and one deployment per test
module and backend). The anvil fixture starts the pinned npm binary on a free loopback port, waits
until it answers JSON-RPC, and kills it afterwards. Import the fixtures into a test module with
``from tests._chain_fixtures import chain, deployment, actors  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from edil.proofs import Chain, Deployment
from edil.proofs._hashing import keccak256

REPO = Path(__file__).resolve().parents[1]
ANVIL = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
# anvil's documented development keys (mnemonic "test test ... junk"); never hold real value.
ANVIL_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
)
EPOCH_LENGTH = 3600
START_EPOCH = 60  # epochs 0..59 have ended when the tests start


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rpc(url: str, method: str, params: list | None = None, timeout: float = 2.0) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


@contextlib.contextmanager
def anvil_node(*, hardfork: str = "cancun", startup_timeout: float = 30.0) -> Iterator[str]:
    """Run the npm anvil binary on a free loopback port; yield its URL; always stop it."""
    if not ANVIL.is_file():
        raise RuntimeError(f"anvil binary missing at {ANVIL}: run `make test` (npm install)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--hardfork", hardfork, "--accounts", "2", "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"anvil exited early ({proc.returncode}): {err}")
            try:
                if "result" in _rpc(url, "eth_chainId"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("anvil did not answer in time")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def make_key(label: str) -> LocalAccount:
    """A deterministic test account derived from a label."""
    return Account.from_key(keccak256(b"edil-test-key/" + label.encode()))


@pytest.fixture(scope="module", params=["in_process", "anvil"])
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    if request.param == "in_process":
        yield Chain.in_process()
        return
    with anvil_node() as url:
        c = Chain.from_url(url, ANVIL_KEYS)
        accounts = c.w3.eth.accounts
        if accounts and accounts[0] != c.default_account.address:
            raise RuntimeError("anvil's default accounts changed; update ANVIL_KEYS")
        yield c


@dataclass(frozen=True)
class Actors:
    nodes: tuple[LocalAccount, ...]
    oracles: tuple[LocalAccount, ...]
    outsider: LocalAccount


@pytest.fixture(scope="module")
def actors() -> Actors:
    return Actors(
        nodes=tuple(make_key(f"node-{i}") for i in range(4)),
        oracles=tuple(make_key(f"oracle-{i}") for i in range(4)),
        outsider=make_key("outsider"),
    )


@pytest.fixture(scope="module")
def deployment(chain: Chain, actors: Actors) -> Deployment:
    """Contracts deployed, nodes 0..2 admitted and funded, oracles 0..2 admitted, quorum 2-of-3,
    the clock at epoch START_EPOCH. Node 3 and the outsider are funded but not admitted."""
    dep = chain.deploy(epoch_length=EPOCH_LENGTH)
    for acct in (*actors.nodes, actors.outsider):
        chain.fund(acct.address, 10**19)
    for node in actors.nodes[:3]:
        dep.admit_node(node.address)
    for oracle in actors.oracles[:3]:
        dep.admit_oracle(oracle.address)
    dep.set_quorum(2)
    dep.advance_to_epoch(START_EPOCH)
    if os.environ.get("EDIL_DEBUG_CHAIN"):
        print("deployed", dep.addresses)
    return dep
