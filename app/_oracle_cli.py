"""``edil oracle run``: an availability oracle as its own process on the bus.

``edil oracle run --key-file oracle.key --nats nats://host:4222 --deployment deployment.json``
hears the nodes' signed announcements and heartbeats over NATS, and after every epoch it watched
signs its view of each node's availability, agrees with the other oracles on the bus and stores
the signed agreed value in the ``EDIL_AVAILABILITY`` stream, where a node collects a quorum of
them to claim on chain (``edil.runtime.claim_from_bus``). It runs until SIGTERM or Ctrl-C.

``oracle.key`` holds the oracle's secp256k1 chain key as hex (the registry must list its address
as an oracle); ``deployment.json`` is what ``edil chain deploy`` writes (the chain and the contracts).
"""

from __future__ import annotations

import argparse
import json
import sys
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
        _, deployment = open_deployment(record, key)
        try:
            oracle = NatsOracle(
                key, deployment, slot_s=args.slot_s or HEARTBEAT_S, grace_s=args.grace_s, agree_wait_s=args.agree_wait_s
            )
        except ValueError as exc:
            raise EdilError(str(exc)) from None
        if not deployment.is_oracle(oracle.address):
            raise EdilError(f"{oracle.address} is not an oracle of the registry {deployment.registry.address}")

        def ready() -> None:
            print(json.dumps({"oracle": oracle.address, "nats": args.nats}), flush=True)
            print(f"edil oracle: {oracle.address} listening on {args.nats} (SIGTERM or Ctrl-C to stop)", file=sys.stderr, flush=True)

        async def serve() -> None:
            import signal

            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await oracle.run(args.nats, stop=stop, ready=ready, nkey_seed=oracle_nkey_seed(key) if args.nkey else None)

        asyncio.run(serve())
        print(f"edil oracle: {oracle.address} stopped after {len(oracle.attestations)} attestations", file=sys.stderr)
        return 0
    except EdilError as exc:
        print(f"edil oracle: {exc}", file=sys.stderr)
        return 2
