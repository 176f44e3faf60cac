"""``edil oracle run``: an availability oracle as its own process on the bus.

``edil oracle run --key-file oracle.key --nats nats://host:4222 --deployment deployment.json``
hears the nodes' signed announcements and heartbeats over NATS, and after every epoch it watched
signs its view of each node's availability, agrees with the other oracles on the bus and stores
the signed agreed value in the ``EDIL_AVAILABILITY`` stream, where a node collects a quorum of
them to claim on chain (``edil.runtime.claim_from_bus``). It runs until SIGTERM or Ctrl-C.

``oracle.key`` holds the oracle's secp256k1 chain key as hex (the registry must list its address
as an oracle); ``deployment.json`` is what ``edil chain deploy`` writes (the chain and the contracts).

Epochs are measured by the wall clock, or with ``--clock chain`` by the chain's (development chains
only: anvil, hardhat, ganache): the latest block's timestamp plus the wall time since this oracle
first saw that block, read afresh at every use. A development chain whose clock is moved (as
``edil demo`` moves it to close an epoch in seconds) then moves the oracle's epochs with it.

Besides its ready line, the oracle prints one JSON line per node card it accepts
(``{"card": address}``) and one per attestation once the stream stored it (``{"attested": {node,
epoch, availability, signature}, "heartbeats": {accepted, rejected}}``, the heartbeats being those
stamped in that epoch). With ``--clock chain`` it also prints its running tally of each epoch's
heartbeats whenever it changes (``{"tally": {epoch, accepted, rejected}}``): whoever moves the
chain's clock waits for the oracle to have judged a slot's heartbeats before moving it on, or
they would be judged against a later time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edil import EdilError


def add_parser(sub: Any) -> None:
    oracle = sub.add_parser("oracle", help="run an availability oracle on the bus")
    osub = oracle.add_subparsers(dest="oracle_command", required=True)
    run = osub.add_parser("run", help="hear heartbeats over NATS, sign each epoch's availability (until SIGTERM or Ctrl-C)")
    run.add_argument("--key-file", required=True, type=Path, help="the oracle's secp256k1 chain key (hex)")
    run.add_argument("--nats", required=True, help="NATS server URL, e.g. nats://127.0.0.1:4222")
    run.add_argument("--deployment", required=True, type=Path, help="deployment.json written by `edil chain deploy`")
    run.add_argument("--slot-s", type=int, default=None, help="heartbeat slot in seconds (default: the runtime's)")
    run.add_argument("--grace-s", type=float, default=1.0, help="wait after an epoch's end before observing it")
    run.add_argument("--agree-wait-s", type=float, default=2.0, help="wait for the other oracles' observations")
    run.add_argument("--nkey", action="store_true", help="connect with the oracle's NKey (a bus that enforces admission)")
    run.add_argument(
        "--clock", choices=("wall", "chain"), default="wall",
        help="what epochs are measured by: the wall clock, or a development chain's block time (its clock may be moved)",
    )


class ChainClock:
    """Seconds on a chain's clock: the latest block's timestamp plus the wall time since this clock
    first saw that block (a development chain's time moves only when a block is mined).

    Args:
        read: the latest block's timestamp (read at every call, so a block mined just before a
            message arrives is seen when that message is judged).
        wall: a monotonic clock in seconds (injected).

    Raises:
        EdilError: the first read fails (later failures keep counting from the last block seen).
    """

    def __init__(self, read: Callable[[], int], *, wall: Callable[[], float] = time.monotonic) -> None:
        self._read, self._wall = read, wall
        self._block_ts = int(read())
        self._seen = wall()

    def __call__(self) -> float:
        try:
            ts = int(self._read())
        except EdilError:  # the node did not answer this once: its time goes on meanwhile
            ts = self._block_ts
        if ts != self._block_ts:
            self._block_ts, self._seen = ts, self._wall()
        return self._block_ts + (self._wall() - self._seen)


def main(args: argparse.Namespace) -> int:
    import asyncio

    from edil.app._ops_cli import load_deployment, open_deployment, read_chain_key
    from edil.runtime import HEARTBEAT_S, NatsOracle, check_nats_url, oracle_nkey_seed

    try:
        check_nats_url(args.nats)  # before any file is read
        for name in ("grace_s", "agree_wait_s"):
            if not 0 <= getattr(args, name) < 3600:
                raise EdilError(f"--{name.replace('_', '-')} must be between 0 and 3600 seconds")
        if args.slot_s is not None and args.slot_s < 1:
            raise EdilError("--slot-s must be at least 1")
        key = read_chain_key(args.key_file)
        record = load_deployment(args.deployment)
        try:
            import nats  # noqa: F401 - fail with a one-line hint before reading the chain
        except ImportError:
            raise EdilError("edil oracle run needs nats-py: pip install nats-py") from None
        chain, deployment = open_deployment(record, key)
        clock: Callable[[], float] = time.time
        if args.clock == "chain":
            from edil.app._runtime_demo import DEV_NODES

            try:
                version = str(chain.w3.client_version).lower()
            except Exception as exc:  # noqa: BLE001 - any RPC failure: say which node and why
                raise EdilError(f"{record.chain_url} does not tell its client version: {type(exc).__name__}") from None
            if not any(dev in version for dev in DEV_NODES):
                raise EdilError(f"--clock chain is for development chains ({', '.join(DEV_NODES)}); {record.chain_url} runs {version}")
            clock = ChainClock(chain.timestamp)
        try:
            oracle = NatsOracle(
                key, deployment, slot_s=args.slot_s or HEARTBEAT_S, grace_s=args.grace_s, agree_wait_s=args.agree_wait_s, clock=clock
            )
        except ValueError as exc:
            raise EdilError(str(exc)) from None
        if not deployment.is_oracle(oracle.address):
            raise EdilError(f"{oracle.address} is not an oracle of the registry {deployment.registry.address}")

        def ready() -> None:
            print(json.dumps({"oracle": oracle.address, "nats": args.nats, "clock": args.clock}), flush=True)
            print(f"edil oracle: {oracle.address} listening on {args.nats} (SIGTERM or Ctrl-C to stop)", file=sys.stderr, flush=True)

        def attested(rec: Any) -> None:
            att = {"node": rec.node, "epoch": rec.epoch, "availability": rec.availability, "signature": "0x" + rec.signature.hex()}
            print(json.dumps({"attested": att, "heartbeats": oracle.heartbeat_tally(rec.epoch)}), flush=True)

        async def report(stop: asyncio.Event) -> None:
            known: set[str] = set()
            tallies: dict[int, dict[str, Any]] = {}
            while not stop.is_set():
                for address in sorted(set(oracle.presence.cards) - known):
                    known.add(address)
                    print(json.dumps({"card": address}), flush=True)
                if args.clock == "chain":
                    for epoch in sorted(oracle.presence.tally):
                        tally = oracle.heartbeat_tally(epoch)
                        if tallies.get(epoch) != tally:
                            tallies[epoch] = tally
                            print(json.dumps({"tally": {"epoch": epoch, **tally}}), flush=True)
                try:
                    await asyncio.wait_for(stop.wait(), 0.05)
                except TimeoutError:
                    pass

        async def serve() -> None:
            import signal

            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            reporting = asyncio.create_task(report(stop))
            try:
                await oracle.run(
                    args.nats, stop=stop, ready=ready, nkey_seed=oracle_nkey_seed(key) if args.nkey else None, on_attested=attested
                )
            finally:
                stop.set()
                await reporting

        asyncio.run(serve())
        print(f"edil oracle: {oracle.address} stopped after {len(oracle.attestations)} attestations", file=sys.stderr)
        return 0
    except EdilError as exc:
        print(f"edil oracle: {exc}", file=sys.stderr)
        return 2
