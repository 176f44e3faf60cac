"""``edil gateway``: serve the journal's Deeploy services over HTTP (:mod:`edil.app._gateway`).

``edil gateway --journal jobs.sqlite --key-file coord.key --node-key node1.key [--node-key ...]
(--deployment deployment.json | --chain-id N --verifier ADDR) [--store DIR] [--host H] [--port P]``

Single-machine mode: the nodes of the ``--node-key`` seeds run in this process (one thread each),
the coordinator's seed signs their tasks, models are read from the R1FS store (``edil fs put``;
an EDIL model or an ONNX file), and the services ``edil deploy`` journaled are placed on the nodes
every ``--reconcile-s`` seconds by :class:`edil.runtime.Reconciler`. The gateway then schedules
the journal's jobs: run it instead of ``edil coordinator run`` on that journal, not beside it
(two schedulers would both dispatch its pending jobs). A ready line of JSON (the URL,
the nodes) goes to stdout; SIGTERM or Ctrl-C stops it. Arguments and files are checked before
anything is served; a mistake is one line on stderr and exit status 2. This module stays light
(the HTTP stack is imported when the gateway starts), so the rest of the command line starts fast.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from edil import AuthorizationError, EdilError, SerializationError

__all__ = ["add_parser", "main"]


def add_parser(sub: Any) -> None:
    """Add ``gateway`` to the ``edil`` subparsers."""
    from pathlib import Path

    gw = sub.add_parser(
        "gateway", help="serve the journal's Deeploy services over HTTP (ciphertexts in, ciphertexts out)",
        description=(
            "Serve the services `edil deploy` journaled, on nodes this process hosts (single machine): the coordinator's "
            "seed signs the tasks, each --node-key seed is one in-process node, models are read from the R1FS store. "
            "Replicas are placed on the nodes every --reconcile-s seconds. OpenAPI docs at /docs."
        ),
    )
    gw.add_argument("--journal", required=True, type=Path, help="the coordinator's journal (`edil coordinator run --journal`, `edil deploy --journal`)")
    gw.add_argument("--key-file", required=True, type=Path, help="the coordinator's secret seed (`edil coordinator init`)")
    gw.add_argument("--node-key", action="append", default=[], type=Path, required=True, help="a node seed (`edil node init`) to host here; repeat per node")
    gw.add_argument("--deployment", type=Path, default=None, help="deployment.json: the PoAI domain's chain id and verifier")
    gw.add_argument("--chain-id", type=int, default=None, help="chain id of the PoAI domain (without --deployment)")
    gw.add_argument("--verifier", default=None, help="PoAIVerifier address of the PoAI domain (without --deployment)")
    gw.add_argument("--store", type=Path, default=None, help="R1FS store directory (default: $EDIL_R1FS_DIR or ./.edil-r1fs, as `edil fs`)")
    gw.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    gw.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port, the ready line says which)")
    gw.add_argument("--reconcile-s", type=float, default=5.0, help="seconds between placement rounds (default 5)")
    gw.add_argument("--task-timeout", type=float, default=60.0, help="seconds a replica may take per request (default 60)")


def _domain(args: Any) -> Any:
    from edil.proofs import Eip712Domain

    if args.deployment is not None:
        from edil.app._ops_cli import load_deployment

        if args.chain_id is not None or args.verifier is not None:
            raise EdilError("give --deployment or --chain-id and --verifier, not both")
        rec = load_deployment(args.deployment)
        chain_id, verifier = rec.chain_id, rec.addresses.verifier
    elif args.chain_id is None or args.verifier is None:
        raise EdilError("give --deployment, or both --chain-id and --verifier")
    else:
        chain_id, verifier = args.chain_id, args.verifier
    try:
        return Eip712Domain("EDIL PoAI", "1", chain_id, verifier)
    except (TypeError, ValueError) as exc:
        raise EdilError(f"bad --chain-id or --verifier: {exc}") from None


def _model_reader(store: Any, readers: Sequence[Any]) -> Callable[[str], bytes]:
    """``cid -> model bytes``: the first of ``readers`` that is a recipient opens it; an ONNX file is imported."""
    from edil import models
    from edil.runtime import R1FS, model_from_bytes, model_to_bytes

    fs = R1FS(store)

    def read(cid: str) -> bytes:
        data: bytes | None = None
        last: Exception | None = None
        for box in readers:
            try:
                data = fs.get(cid, box)
                break
            except AuthorizationError as exc:
                last = exc
        if data is None:
            raise last or EdilError(f"model {cid} cannot be read")
        try:
            model_from_bytes(data)
            return data
        except SerializationError:
            pass
        try:
            import onnx

            return model_to_bytes(models.from_onnx(onnx.load_model_from_string(data)))
        except EdilError:
            raise
        except Exception as exc:  # noqa: BLE001 - neither format: the service's model is unusable
            raise SerializationError(f"model {cid} is neither an EDIL model nor an ONNX file ({type(exc).__name__})") from None

    return read


def main(args: Any) -> int:
    """``edil gateway`` (arguments and files are checked before anything is served)."""
    from edil.app._ops_cli import guarded

    return guarded("edil gateway", _serve, args)


def _serve(args: Any) -> int:
    import json
    import os
    import sys
    from pathlib import Path

    import uvicorn

    from edil import runtime as rt
    from edil.app._gateway import Gateway, create_app
    from edil.app._node_cli import read_seed

    if not 0 <= args.port <= 65535:
        raise EdilError(f"--port {args.port} is not a TCP port")
    if args.reconcile_s <= 0 or args.task_timeout <= 0:
        raise EdilError("--reconcile-s and --task-timeout must be positive")
    domain = _domain(args)
    coord = rt.CoordinatorIdentity.from_seed(read_seed(args.key_file))
    seeds = [read_seed(p) for p in args.node_key]
    if not args.journal.parent.is_dir():
        raise EdilError(f"cannot open the journal {args.journal}: no directory {args.journal.parent}")
    store_dir = args.store or Path(os.environ.get("EDIL_R1FS_DIR") or ".edil-r1fs")
    if not store_dir.is_dir():
        raise EdilError(f"no R1FS store at {store_dir} (`edil fs put` creates it)")
    addresses = [rt.NodeIdentity.from_seed(s).address for s in seeds]
    if len(set(addresses)) != len(addresses):
        raise EdilError("two --node-key files hold the same node")
    registry = rt.StaticRegistry(addresses)
    journal = rt.Journal(str(args.journal))
    executor = rt.LocalExecutor(blobs=store_dir)
    sched = rt.Scheduler(executor, registry, journal, identity=coord, domain=domain, timeout_s=args.task_timeout)
    cards = [sched.launch(rt.NodeConfig(seed=s)) for s in seeds]
    reconciler = rt.Reconciler(journal, registry)
    readers = [coord] + [rt.NodeIdentity.from_seed(s) for s in seeds]  # the nodes are hosted here: their keys open models too
    gateway = Gateway(sched, reconciler, models=_model_reader(executor.blob_store, readers), attempt_timeout_s=args.task_timeout)
    stop = threading.Event()

    def place() -> None:
        while not stop.is_set():
            try:
                for ch in reconciler.reconcile(nodes=cards):
                    print(f"edil gateway: {ch.action} {ch.service_id[:16]} on {ch.node} ({ch.reason})", file=sys.stderr, flush=True)
            except EdilError as exc:
                print(f"edil gateway: placement failed: {' '.join(str(exc).split())[:300]}", file=sys.stderr, flush=True)
            stop.wait(args.reconcile_s)

    app = create_app(gateway)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise EdilError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    placer = threading.Thread(target=place, name="edil-gateway-placement", daemon=True)
    placer.start()
    print(json.dumps({"url": f"http://{host}:{port}", "nodes": [c.address for c in cards], "journal": str(args.journal)}), flush=True)
    # uvicorn stops gracefully on SIGTERM, then raises it again under the handler it found: make
    # that one a no-op, so a stopped gateway closes its nodes and journal and exits with status 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")).run(sockets=[sock])
    finally:
        stop.set()
        placer.join(timeout=5)
        sock.close()
        executor.close()
        journal.close()
    print("edil gateway: stopped", file=sys.stderr)
    return 0
