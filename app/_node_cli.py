"""``edil node``: an operator's own edge node (keys stay on the operator's machine).

* ``edil coordinator init --key-file coord.key --deployment deployment.json`` (or ``--chain-id N
  --verifier 0x...``): the coordinator's seed and ``coordinator.json`` (its public keys and PoAI
  domain), which node operators pass to ``edil node run`` or ``edil node serve``.
* ``edil coordinator run --key-file coord.key --deployment deployment.json --nats URL --journal
  jobs.sqlite``: the coordinator daemon (see :mod:`edil.app._ops_cli` and :mod:`edil.app._coordinator`).
* ``edil node init --key-file node.key``: a fresh secret seed (file mode 0600) and the node's
  public card; the operator hands the card's address to the registry owner for admission.
* ``edil node show --key-file node.key``: the public card again.
* ``edil node serve --key-file node.key --coordinator coordinator.json --ray-address ADDR``:
  host the node as a detached Ray actor on this machine's Ray node; a coordinator reaches it
  with ``RayExecutor.attach(address)`` and admits it only if the registry lists it. Ray does
  not isolate the clients of a cluster from its actors: serve only on a cluster trusted with
  the node's keys.
* ``edil node status --key-file node.key --nats URL``: the running node's card and a fresh
  signed heartbeat, asked over the bus with the node's own key (exit status 2 when it is not
  running).
* ``edil node run --key-file node.key --coordinator coordinator.json --nats nats://host:4222``:
  run the node as a daemon in this process: it connects outbound to the NATS server (reconnecting
  with backoff), pulls sealed tasks from its JetStream queue, stores sealed replies for the
  coordinator and, on SIGTERM or Ctrl-C, finishes the task in hand before exiting. A coordinator
  reaches it with ``NatsExecutor.attach(address, coordinator=keys)``. Inputs a task carries by
  R1FS CID (``NatsExecutor(url, blobs=True)``) are read from the bus's ``EDIL_R1FS`` object store
  (``--r1fs-bucket``, ``--no-r1fs``) with the node's key, once per CID. Heartbeats are signed at
  the node's own clock only (a request for another time is refused, so nobody on the bus can
  collect heartbeats for times the node may be down); ``--dev-clock`` lifts that for development
  chains whose clock a demo moves (``make demo`` passes it), never for a real network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from edil import EdilError


def add_coordinator_parser(sub: Any) -> None:
    coord = sub.add_parser("coordinator", help="the coordinator's keys, and the coordinator.json node operators serve with")
    csub = coord.add_subparsers(dest="coordinator_command", required=True)
    for name, text in (("init", "write a fresh secret seed and print coordinator.json"), ("show", "print coordinator.json again")):
        p = csub.add_parser(name, help=text)
        p.add_argument("--key-file", required=True, type=Path, help="the coordinator's secret seed" + (" (refuses to overwrite)" if name == "init" else ""))
        p.add_argument("--deployment", type=Path, default=None, help="deployment.json (`edil chain deploy`): gives the chain id and verifier")
        p.add_argument("--chain-id", type=int, default=None, help="EIP-155 chain id of the PoAI verifier's chain (without --deployment)")
        p.add_argument("--verifier", default=None, help="address of the PoAIVerifier contract, transcripts are signed for it (without --deployment)")
    from edil.app._ops_cli import add_coordinator_run

    add_coordinator_run(csub)


def coordinator_main(args: argparse.Namespace) -> int:
    from edil.runtime import CoordinatorIdentity, CoordinatorKeys

    if args.coordinator_command == "run":
        from edil.app._coordinator import run_main
        from edil.app._ops_cli import guarded

        return guarded("edil coordinator", run_main, args)
    try:
        # The domain is checked before the seed file is written.
        from edil.app._ops_cli import poai_domain_from_args

        domain = poai_domain_from_args(args)
        if args.coordinator_command == "init":
            seed = _write_new_seed(args.key_file)
        else:
            seed = read_seed(args.key_file)
        ident = CoordinatorIdentity.from_seed(seed)
        print(json.dumps(CoordinatorKeys(ident.verify_key, ident.box_key, domain).to_json(), indent=2))
        return 0
    except EdilError as exc:
        print(f"edil coordinator: {exc}", file=sys.stderr)
        return 2


def _write_new_seed(path: Path) -> bytes:
    """A fresh 32-byte seed written as hex to a new file readable by its owner only."""
    if path.exists():
        raise EdilError(f"{path} exists; refusing to overwrite a key")
    seed = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise EdilError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(seed.hex() + "\n")
    return seed


def add_parser(sub: Any) -> None:
    node = sub.add_parser("node", help="create, show or serve this operator's edge node")
    nsub = node.add_subparsers(dest="node_command", required=True)
    init = nsub.add_parser("init", help="write a fresh secret seed and print the node's public card")
    init.add_argument("--key-file", required=True, type=Path, help="where to write the seed (refuses to overwrite)")
    show = nsub.add_parser("show", help="print the node's public card")
    show.add_argument("--key-file", required=True, type=Path)
    serve = nsub.add_parser("serve", help="host the node as a detached Ray actor on this machine")
    serve.add_argument("--key-file", required=True, type=Path)
    serve.add_argument("--coordinator", required=True, type=Path, help="JSON of the coordinator's public keys and PoAI domain")
    serve.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    run = nsub.add_parser("run", help="run the node as a daemon connected to a NATS server (until SIGTERM or Ctrl-C)")
    run.add_argument("--key-file", required=True, type=Path)
    run.add_argument("--coordinator", required=True, type=Path, help="JSON of the coordinator's public keys and PoAI domain")
    run.add_argument("--nats", required=True, help="NATS server URL, e.g. nats://127.0.0.1:4222")
    run.add_argument("--heartbeat-s", type=float, default=None, help="period of the node's signed heartbeats (default: 30 s)")
    run.add_argument(
        "--r1fs-bucket", default="EDIL_R1FS",
        help="R1FS object-store bucket on the bus to fetch task inputs sent by CID from, read-only (default: EDIL_R1FS)",
    )
    run.add_argument("--no-r1fs", action="store_true", help="no R1FS store: tasks that carry inputs by CID fail on this node")
    run.add_argument(
        "--dev-clock", action="store_true",
        help="development chains only: sign heartbeats for any time a requester names (a demo moving its chain's clock); "
        "without it heartbeats carry this machine's time only",
    )
    status = nsub.add_parser("status", help="ask the running node for its card and a signed heartbeat over NATS")
    status.add_argument("--key-file", required=True, type=Path)
    status.add_argument("--nats", required=True, help="NATS server URL, e.g. nats://127.0.0.1:4222")


def read_seed(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        seed = bytes.fromhex(text)
    except OSError as exc:
        raise EdilError(f"cannot read key file {path}: {exc.strerror}") from None
    except ValueError:
        raise EdilError(f"key file {path} does not hold a hex seed") from None
    if len(seed) < 16:
        raise EdilError(f"key file {path} holds a seed shorter than 16 bytes")
    return seed


def _card_json(card: Any) -> str:
    return json.dumps(
        {
            "address": card.address,
            "signing_key": card.signing_key.hex(),
            "box_key": card.box_key.hex(),
            "capabilities": card.capabilities.to_wire(),
            "signature": "0x" + card.signature.hex(),
        },
        indent=2,
    )


def _run(
    seed: bytes, coord: Any, url: str, heartbeat_s: float | None = None, r1fs_bucket: str | None = "EDIL_R1FS", *, dev_clock: bool = False
) -> int:
    """``edil node run``: serve until SIGTERM/SIGINT; the card goes to stdout once subscribed.

    Task inputs sent by R1FS CID are fetched from ``r1fs_bucket`` on the same server, over the
    node's own connection and key (read-only), once per CID (a bounded cache). ``dev_clock``:
    heartbeats signed for any requested time (``serve_node(dev_clock=True)``, development only).
    """
    from edil.runtime import EdgeNode, NodeIdentity, check_nats_url, run_daemon, serve_node

    check_nats_url(url)
    try:
        import nats  # noqa: F401 - fail with a one-line hint before building the node
    except ImportError:
        raise EdilError("edil node run needs nats-py: pip install nats-py") from None
    # The node checks requested heartbeat times too (EdgeNode.heartbeat): it opts in along with the daemon.
    node = EdgeNode(NodeIdentity.from_seed(seed), coordinator_key=coord.verify_key, coordinator_box_key=coord.box_key, domain=coord.domain,
                    dev_clock=dev_clock)

    def ready(card: Any) -> None:
        print(_card_json(card), flush=True)
        print(f"edil node: serving {card.address} on {url} (SIGTERM or Ctrl-C to stop)", file=sys.stderr, flush=True)
        if dev_clock:
            print("edil node: --dev-clock: heartbeats are signed for any time a requester names (development chains only)",
                  file=sys.stderr, flush=True)

    extra: dict[str, Any] = {} if heartbeat_s is None else {"heartbeat_s": heartbeat_s}
    run_daemon(serve_node(node, url, coordinator=coord, ready=ready, r1fs_bucket=r1fs_bucket, dev_clock=dev_clock, **extra))  # uvloop where installed
    fetched = "" if node.blobs is None else f"; R1FS: {node.blobs.fetches} fetched, {node.blobs.hits} from cache"
    print(f"edil node: {node.address} stopped after {node.completed} tasks{fetched}", file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    from edil.runtime import CoordinatorKeys, NodeIdentity, check_ray_address, serve_node_on_ray

    try:
        if args.node_command in ("run", "status"):
            from edil.runtime import check_nats_url

            check_nats_url(args.nats)  # before any file is read
            if getattr(args, "heartbeat_s", None) is not None and not 0 < args.heartbeat_s <= 3600:
                raise EdilError("--heartbeat-s must be more than 0 and at most 3600 seconds")
            if args.node_command == "run" and not args.no_r1fs:
                from edil.runtime import NatsBlobStore

                try:
                    NatsBlobStore.check_bucket(args.r1fs_bucket)
                except ValueError as exc:
                    raise EdilError(f"--r1fs-bucket: {exc}") from None
        if args.node_command == "init":
            print(_card_json(NodeIdentity.from_seed(_write_new_seed(args.key_file)).card()))
            return 0
        seed = read_seed(args.key_file)
        if args.node_command == "show":
            print(_card_json(NodeIdentity.from_seed(seed).card()))
            return 0
        if args.node_command == "status":
            import asyncio

            from edil.runtime import node_status

            print(json.dumps(asyncio.run(node_status(NodeIdentity.from_seed(seed), args.nats)), indent=2))
            return 0
        try:
            # Strict, depth-safe decoding of the file's bytes (it comes from the coordinator's operator).
            coord = CoordinatorKeys.from_json(args.coordinator.read_bytes())
        except OSError as exc:
            raise EdilError(f"cannot read {args.coordinator}: {exc.strerror}") from None
        if args.node_command == "run":
            return _run(seed, coord, args.nats, args.heartbeat_s, None if args.no_r1fs else args.r1fs_bucket, dev_clock=args.dev_clock)
        if args.ray_address not in (None, "auto", "local"):
            check_ray_address(args.ray_address)
        try:
            card = serve_node_on_ray(seed, coord, address=args.ray_address)
        except ImportError:
            raise EdilError('edil node serve needs Ray: pip install "edil[ray]"') from None
        print(_card_json(card))
        return 0
    except EdilError as exc:
        print(f"edil node: {exc}", file=sys.stderr)
        return 2
