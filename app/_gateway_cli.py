"""``edil gateway``: serve the journal's Deeploy services over HTTP (:mod:`edil.app._gateway`).

``edil gateway --journal jobs.sqlite --key-file coord.key (--node-key node1.key [...] | --nats URL [--node ADDR ...])
(--deployment deployment.json | --chain-id N --verifier ADDR) [--store DIR] [--host H] [--port P]``

Single-machine mode (``--node-key``): the nodes of the ``--node-key`` seeds run in this process
(one thread each). Bus mode (``--nats URL``): the nodes are ``edil node run`` daemons on that NATS
server, serving the coordinator.json of ``--key-file`` (``edil coordinator show``); the gateway
connects with the coordinator's NKey, as ``edil coordinator run`` does, hears the daemons' signed
announcements and heartbeats (:class:`~edil.runtime.Presence`), admits those the registry lists
(``--node`` addresses, or the deployment's chain registry when no ``--node`` is given) and sends
their tasks through JetStream (:class:`~edil.runtime.NatsExecutor`). A daemon counts as present
while a heartbeat of it fills one of its last three heartbeat periods (``--heartbeat-s``, the
daemons' period): one that stops beating loses its replicas at the next placement round.

In both modes the coordinator's seed signs the tasks, models are read from the R1FS store
(``edil fs put``; an EDIL model or an ONNX file), and the services ``edil deploy`` journaled are
placed on the nodes every ``--reconcile-s`` seconds by :class:`edil.runtime.Reconciler`, pinned to
the PoAI domain's chain (``--deployment`` or ``--chain-id``): a service whose owner signed its spec
for another chain is neither placed nor served (its replicas are evicted; a request for it is a
404 that names both chains), whichever tool journaled it. The
gateway then schedules the journal's jobs: run it instead of ``edil coordinator run`` on that
journal, not beside it (two schedulers would both dispatch its pending jobs). The read-only
network explorer is served at ``/explorer/``. A ready line of JSON (the URL, the nodes) goes to
stdout; SIGTERM or Ctrl-C stops it. Arguments and files are checked before anything is served;
a mistake is one line on stderr and exit status 2. This module stays light (the HTTP stack is
imported when the gateway starts), so the rest of the command line starts fast.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
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
            "Serve the services `edil deploy` journaled, on nodes this process hosts (each --node-key seed is one in-process "
            "node) or on `edil node run` daemons on a NATS server (--nats): the coordinator's seed signs the tasks, models "
            "are read from the R1FS store. Replicas are placed on the nodes every --reconcile-s seconds; only services whose "
            "spec is signed for the PoAI domain's chain are placed and served. OpenAPI docs at "
            "/docs, the network explorer at /explorer/."
        ),
    )
    gw.add_argument("--journal", required=True, type=Path, help="the coordinator's journal (`edil coordinator run --journal`, `edil deploy --journal`)")
    gw.add_argument("--key-file", required=True, type=Path, help="the coordinator's secret seed (`edil coordinator init`)")
    gw.add_argument("--node-key", action="append", default=[], type=Path, help="a node seed (`edil node init`) to host here; repeat per node")
    gw.add_argument("--nats", default=None, metavar="URL",
                    help="reach `edil node run` daemons on this NATS server instead of hosting nodes (not with --node-key)")
    gw.add_argument("--node", action="append", default=[], metavar="ADDRESS",
                    help="with --nats: a node address to admit; repeat per node (default: the deployment's chain registry)")
    gw.add_argument("--rpc", default=None, help="with --nats and no --node: JSON-RPC URL of the registry's chain (default: deployment.json's)")
    gw.add_argument("--heartbeat-s", type=float, default=None,
                    help="with --nats: the daemons' heartbeat period (`edil node run --heartbeat-s`, default 30)")
    gw.add_argument("--deployment", type=Path, default=None,
                    help="deployment.json: the PoAI domain's chain id and verifier (only services signed for that chain are served)")
    gw.add_argument("--chain-id", type=int, default=None,
                    help="chain id of the PoAI domain (without --deployment); only services signed for this chain are served")
    gw.add_argument("--verifier", default=None, help="PoAIVerifier address of the PoAI domain (without --deployment)")
    gw.add_argument("--store", type=Path, default=None, help="R1FS store directory (default: $EDIL_R1FS_DIR or ./.edil-r1fs, as `edil fs`)")
    gw.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    gw.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port, the ready line says which)")
    gw.add_argument("--reconcile-s", type=float, default=5.0, help="seconds between placement rounds (default 5)")
    gw.add_argument("--task-timeout", type=float, default=60.0, help="seconds a replica may take per request (default 60)")


def _domain(args: Any) -> Any:
    from edil.app._ops_cli import poai_domain_from_args

    return poai_domain_from_args(args)


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


def _check_address(text: str) -> str:
    from eth_utils import is_address, to_checksum_address

    if not isinstance(text, str) or not is_address(text):
        raise EdilError(f"--node {text[:60]!r} is not an address")
    return str(to_checksum_address(text))


class _Bus:
    """Bus mode: node daemons heard on NATS (:class:`~edil.runtime.Presence`), attached and placed.

    Args:
        url: the NATS server.
        coord: the coordinator's identity (its Ed25519 key is its NKey on the bus).
        registry: which nodes are admitted.
        heartbeat_s: the daemons' heartbeat period.
    """

    def __init__(self, url: str, coord: Any, registry: Any, heartbeat_s: float) -> None:
        import time

        from edil import runtime as rt

        self.interval_ms = max(1, round(heartbeat_s * 1000))
        # One epoch of 60 heartbeat periods: the Reconciler's availability is the share of them seen.
        self.monitor = rt.HeartbeatMonitor(registry, epoch_ms=60 * self.interval_ms, interval_ms=self.interval_ms)
        self.presence = rt.Presence(self.monitor)
        self.executor = rt.NatsExecutor(url, identity=coord, presence=self.presence)
        self.clock = time.time
        self._joining: dict[str, Any] = {}  # address -> the worker's pending admission of it

    def live(self) -> list[Any]:
        """Cards of the daemons announced on the bus with a heartbeat in their last three periods."""
        now_ms = int(self.clock() * 1000)
        out = []
        for card in list(self.presence.cards.values()):
            if self.monitor.recent(card.address, now_ms=now_ms, window_ms=3 * self.interval_ms) > 0:
                out.append(card)
        return out

    def attach(self, sched: Any, gateway: Any, log: Callable[[str], None]) -> None:
        """Attach the live daemons the scheduler does not have yet (admitted by the gateway's worker)."""
        from edil import RuntimeTaskError, VerificationError

        have = {a.lower() for a in sched.nodes}
        for card in self.live():
            joining = self._joining.get(card.address.lower())
            if card.address.lower() in have or (joining is not None and not joining.done()):
                continue
            try:
                attached = self.executor.attach(card.address, coordinator=sched.coordinator_keys, timeout_s=2.0)
            except (RuntimeTaskError, VerificationError) as exc:
                log(f"cannot attach {card.address}: {' '.join(str(exc).split())[:200]}")
                continue
            if attached.signing_key != card.signing_key or attached.box_key != card.box_key:
                log(f"{card.address} answers with keys other than it announced; not attached")
                continue
            self._joining[card.address.lower()] = gateway.call_in_worker(lambda c=attached: sched.add_node(c))
            log(f"attached node {card.address}")


def _place_once(reconciler: Any, nodes: Callable[[], Any], log: Callable[[str], None], *, attach: Callable[[], None] | None = None) -> None:
    """One placement round (attach the bus's new daemons, then reconcile); a failure is one log line.

    Placement must outlive any one failed round (a registry that does not answer, a journal that
    ``edil deploy`` holds locked past its timeout), or dead and revoked nodes would keep their
    replicas for as long as the gateway runs.
    """
    try:
        if attach is not None:
            attach()
        for ch in reconciler.reconcile(nodes=nodes()):
            log(f"{ch.action} {ch.service_id[:16]} on {ch.node} ({ch.reason})")
    except EdilError as exc:
        log(f"placement failed: {' '.join(str(exc).split())[:300]}")
    except Exception as exc:  # noqa: BLE001 - e.g. sqlite3.OperationalError: this round is lost, the next one runs
        log(f"placement failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")


def _serve(args: Any) -> int:
    import json
    import os
    import sys
    from pathlib import Path

    import uvicorn

    from edil import runtime as rt
    from edil.app._gateway import Gateway, create_app, gateway_explorer
    from edil.app._node_cli import read_seed

    if not 0 <= args.port <= 65535:
        raise EdilError(f"--port {args.port} is not a TCP port")
    if args.reconcile_s <= 0 or args.task_timeout <= 0:
        raise EdilError("--reconcile-s and --task-timeout must be positive")
    bus_mode = args.nats is not None
    if bus_mode:
        rt.check_nats_url(args.nats)
        if args.node_key:
            raise EdilError("give --node-key (nodes in this process) or --nats (node daemons on the bus), not both")
        if args.heartbeat_s is not None and not 0 < args.heartbeat_s <= 3600:
            raise EdilError("--heartbeat-s must be more than 0 and at most 3600 seconds")
        if not args.node and args.deployment is None:
            raise EdilError("with --nats, name the admitted nodes with --node, or give --deployment for its chain registry")
    else:
        if not args.node_key:
            raise EdilError("give --node-key (nodes in this process) or --nats (node daemons on the bus)")
        if args.node or args.rpc is not None or args.heartbeat_s is not None:
            raise EdilError("--node, --rpc and --heartbeat-s go with --nats")
    admit = [_check_address(a) for a in args.node]
    if args.rpc is not None:
        from edil.app._ops_cli import check_rpc_url

        if admit:
            raise EdilError("--rpc reads the chain registry, which --node replaces: give one of them")
        check_rpc_url(args.rpc)
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

    def log(line: str) -> None:
        print(f"edil gateway: {line}", file=sys.stderr, flush=True)

    registry: Any
    if not bus_mode or admit:
        registry = rt.StaticRegistry(addresses or admit)
    else:
        from edil.app._ops_cli import load_deployment, open_deployment

        _, dep = open_deployment(load_deployment(args.deployment), None, args.rpc)
        registry = rt.ChainRegistry(dep)
    bus = _Bus(args.nats, coord, registry, args.heartbeat_s or 30.0) if bus_mode else None
    executor: Any = bus.executor if bus is not None else rt.LocalExecutor(blobs=store_dir)
    journal = None
    try:
        try:
            journal = rt.Journal(str(args.journal))
        except sqlite3.Error as exc:  # not a database, or not one this process may open
            raise EdilError(f"cannot open the journal {args.journal}: {exc}") from None
        sched = rt.Scheduler(executor, registry, journal, identity=coord, domain=domain, timeout_s=args.task_timeout)
        cards = [sched.launch(rt.NodeConfig(seed=s)) for s in seeds]
        # Pinned to the domain's chain: a spec signed for another chain (journaled by any tool) runs nowhere here.
        reconciler = rt.Reconciler(journal, registry, availability=None if bus is None else bus.monitor, chain_id=domain.chain_id)
        readers = [coord] + [rt.NodeIdentity.from_seed(s) for s in seeds]  # hosted nodes' keys open models too
        gateway = Gateway(sched, reconciler, models=_model_reader(rt.LocalBlobStore(store_dir), readers),
                          attempt_timeout_s=args.task_timeout)
        explorer = gateway_explorer(gateway) if bus is None else gateway_explorer(gateway, cards=bus.presence, monitors=[bus.presence])
        stop = threading.Event()

        def nodes() -> list[Any]:
            if bus is None:
                return cards
            admitted = {a.lower() for a in sched.nodes}
            return [c for c in bus.live() if c.address.lower() in admitted]

        def place() -> None:
            while not stop.is_set():
                _place_once(reconciler, nodes, log, attach=None if bus is None else lambda: bus.attach(sched, gateway, log))
                stop.wait(args.reconcile_s)

        app = create_app(gateway, explorer=explorer)
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
            sock.listen(2048)  # before the ready line: a client that reads it may connect at once (queued until served)
        except OSError as exc:
            sock.close()
            raise EdilError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        port = sock.getsockname()[1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        placer = threading.Thread(target=place, name="edil-gateway-placement", daemon=True)
        placer.start()
        ready = {"url": f"http://{host}:{port}", "nodes": [c.address for c in cards], "journal": str(args.journal)}
        if bus is not None:
            ready["nats"] = args.nats
        print(json.dumps(ready), flush=True)
        # uvicorn stops gracefully on SIGTERM, then raises it again under the handler it found: make
        # that one a no-op, so a stopped gateway closes its nodes and journal and exits with status 0.
        signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")).run(sockets=[sock])
        finally:
            stop.set()
            placer.join(timeout=5)
            sock.close()
    finally:
        executor.close()  # attached daemons belong to their operators: they keep running
        if journal is not None:
            journal.close()
    print("edil gateway: stopped", file=sys.stderr)
    return 0
