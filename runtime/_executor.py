"""Executors: where nodes live and how envelopes reach them.

* :class:`LocalExecutor` (the embedded default): nodes are objects in this process, each with
  its own worker thread (so a hung node only blocks itself and timeouts work).
* :class:`RayExecutor`: each node is a Ray actor, spread over the nodes of an existing Ray
  cluster reached by address (``ray.init(address=...)``).

Both move only sealed envelope bytes; the scheduler never calls node code directly, so the
same conformance tests run on both.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from edil import RuntimeTaskError

from ._deps import Eip712Domain
from ._identity import Capabilities, NodeCard, NodeIdentity
from ._node import EdgeNode

__all__ = ["Executor", "LocalExecutor", "NodeConfig", "RayExecutor", "serve_node_on_ray"]

RAY_NAMESPACE = "edil"


def _actor_name(address: str) -> str:
    return f"edil-node-{address.lower()}"


@dataclass(frozen=True)
class NodeConfig:
    """How to start one node.

    Attributes:
        seed: the node's secret identity seed.
        capabilities: advertised capabilities (detected when ``None``).
        node_factory: builds the node from :class:`EdgeNode`'s arguments (``None``: an
            :class:`EdgeNode`); :func:`edil.runtime.testing.faulty` starts misbehaving nodes with it.
            On Ray it is pickled to the actor, so it must be importable there.
        dev_clock: development chains only: the node signs heartbeats for any time the
            executor's ``heartbeat(address, now_ms)`` names (:class:`EdgeNode`'s ``dev_clock``; a
            chain whose clock is moved on demand, as :func:`~edil.runtime.beat_through_epoch`
            drives it). Off, a node signs only its own time.
    """

    seed: bytes
    capabilities: Capabilities | None = None
    node_factory: Callable[..., EdgeNode] | None = None
    dev_clock: bool = False


_HEX32 = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-fA-F]{64}\Z")]


class _DomainRecord(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=256)]
    version: Annotated[str, msgspec.Meta(max_length=64)]
    chain_id: int  # uint256: Eip712Domain checks the range (msgspec bounds stop at 2^63)
    verifying_contract: Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{40}\Z")]


class _CoordinatorRecord(msgspec.Struct, forbid_unknown_fields=True):
    verify_key: _HEX32
    box_key: _HEX32
    domain: _DomainRecord


@dataclass(frozen=True)
class CoordinatorKeys:
    """The coordinator's public keys and PoAI domain, handed to every node it starts.

    Node operators who host their own node (``edil node serve``) get them as JSON
    (:meth:`to_json`, e.g. ``json.dumps(scheduler.coordinator_keys.to_json())``).
    """

    verify_key: bytes
    box_key: bytes
    domain: Eip712Domain

    def to_json(self) -> dict[str, Any]:
        d = self.domain
        return {
            "verify_key": self.verify_key.hex(),
            "box_key": self.box_key.hex(),
            "domain": {"name": d.name, "version": d.version, "chain_id": d.chain_id, "verifying_contract": d.verifying_contract},
        }

    @classmethod
    def from_json(cls, data: Any) -> CoordinatorKeys:
        """Inverse of :meth:`to_json`.

        Args:
            data: the mapping :meth:`to_json` returns, or the JSON text of it (``bytes`` or
                ``str``, e.g. the contents of ``coordinator.json``), decoded strictly.

        Raises:
            SerializationError: not a coordinator-keys record (64 hex digits per key, a domain
                with a uint256 chain id and a valid verifying-contract address).
        """
        from edil import SerializationError

        try:
            if isinstance(data, bytes | bytearray | memoryview | str):
                # Typed decoding with unknown fields refused: msgspec never descends into nesting
                # the record does not have, so deep input cannot exhaust the C stack.
                rec = msgspec.json.decode(data.encode() if isinstance(data, str) else bytes(data), type=_CoordinatorRecord, strict=True)
            else:
                rec = msgspec.convert(data, _CoordinatorRecord, strict=True)
            d = rec.domain
            domain = Eip712Domain(d.name, d.version, d.chain_id, d.verifying_contract)
        except (msgspec.DecodeError, TypeError, ValueError, UnicodeError) as exc:
            raise SerializationError(f"bad coordinator keys: {exc}") from None
        return cls(bytes.fromhex(rec.verify_key), bytes.fromhex(rec.box_key), domain)


def _build_node(config: NodeConfig, coord: CoordinatorKeys, clock: Callable[[], float] | None) -> EdgeNode:
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    if config.dev_clock is True:  # only when asked, so factories that predate the option still build nodes
        kwargs["dev_clock"] = True
    factory = EdgeNode if config.node_factory is None else config.node_factory
    return factory(
        NodeIdentity.from_seed(config.seed),
        coordinator_key=coord.verify_key,
        coordinator_box_key=coord.box_key,
        domain=coord.domain,
        capabilities=config.capabilities,
        **kwargs,
    )


class Executor(abc.ABC):
    """Where nodes run. Every method moves bytes only."""

    name: str = "executor"
    #: The R1FS backend the coordinator and the nodes share for inputs tasks carry by CID
    #: (:mod:`edil.runtime._blobs`); ``None``: every input travels inline.
    blob_store: Any = None

    @abc.abstractmethod
    def launch(self, config: NodeConfig, coordinator: CoordinatorKeys) -> NodeCard:
        """Start a node; returns its signed public card."""

    @abc.abstractmethod
    def submit(self, address: str, envelope: bytes) -> Future[bytes]:
        """Deliver an envelope; the future resolves to the node's sealed reply (or its error)."""

    @abc.abstractmethod
    def heartbeat(self, address: str, now_ms: int | None = None) -> bytes:
        """Ask a node for a signed heartbeat."""

    @abc.abstractmethod
    def kill(self, address: str) -> None:
        """Stop a node abruptly (fault drills)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every node this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalExecutor(Executor):
    """In-process nodes, one worker thread each. No setup; the embedded default.

    Args:
        clock: clock handed to nodes it launches (``time.time`` when omitted).
        blobs: an R1FS directory (or a ``LocalBlobStore``) shared by the coordinator and the
            nodes it launches: large task inputs then travel by CID (:mod:`edil.runtime._blobs`).
    """

    name = "local"

    def __init__(self, *, clock: Callable[[], float] | None = None, blobs: Any = None) -> None:
        self.clock = clock
        if blobs is not None and not hasattr(blobs, "get_many"):
            from ._r1fs import LocalBlobStore

            blobs = LocalBlobStore(blobs)
        self.blob_store = blobs
        self._nodes: dict[str, tuple[EdgeNode, ThreadPoolExecutor]] = {}
        self._dead: set[str] = set()
        self._lock = threading.Lock()

    def add(self, node: EdgeNode) -> NodeCard:
        """Host an already built node (e.g. a custom subclass)."""
        with self._lock:
            self._nodes[node.address] = (node, ThreadPoolExecutor(1, thread_name_prefix=f"edil-node-{node.address[:8]}"))
        return node.card

    def launch(self, config: NodeConfig, coordinator: CoordinatorKeys) -> NodeCard:
        node = _build_node(config, coordinator, self.clock)
        if self.blob_store is not None:
            from ._blobs import BlobCache

            node.blobs = BlobCache(self.blob_store)  # each node its own cache over the shared store
        return self.add(node)

    def node(self, address: str) -> EdgeNode:
        return self._nodes[address][0]

    def submit(self, address: str, envelope: bytes) -> Future[bytes]:
        entry = self._nodes.get(address)
        if entry is None or address in self._dead:
            fut: Future[bytes] = Future()
            fut.set_exception(RuntimeTaskError(f"node {address} is not running"))
            return fut
        node, pool = entry
        return pool.submit(node.handle, envelope)

    def heartbeat(self, address: str, now_ms: int | None = None) -> bytes:
        if address in self._dead:
            raise RuntimeTaskError(f"node {address} is not running")
        return self._nodes[address][0].heartbeat(now_ms=now_ms)

    def kill(self, address: str) -> None:
        self._dead.add(address)

    def close(self) -> None:
        with self._lock:
            for _, pool in self._nodes.values():
                pool.shutdown(wait=False, cancel_futures=True)
            self._nodes.clear()


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (Ray itself retries for minutes) when nothing listens at ``[ray://]host:port``.

    Raises:
        RuntimeTaskError: a malformed address, or nothing accepts a connection there.
    """
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RuntimeTaskError(f"--ray-address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RuntimeTaskError(f"no Ray cluster answers at {address}: {exc.strerror or exc}") from None


class _NodeActor:
    """The Ray actor body: one :class:`EdgeNode` per actor process slot."""

    def __init__(self, config: NodeConfig, coordinator: CoordinatorKeys) -> None:
        self.node = _build_node(config, coordinator, None)
        self._coordinator = coordinator

    def card(self) -> NodeCard:
        return self.node.card

    def coordinator(self) -> CoordinatorKeys:
        return self._coordinator

    def handle(self, envelope: bytes) -> bytes:
        return self.node.handle(envelope)

    def heartbeat(self, now_ms: int | None) -> bytes:
        return self.node.heartbeat(now_ms=now_ms)


class RayExecutor(Executor):
    """Each node a Ray actor on an existing Ray cluster.

    Args:
        address: Ray cluster address (``"auto"``, ``"ray://host:port"``, ``"127.0.0.1:6379"``);
            when ``None`` and Ray is already initialised in this process, that session is used.
        spread: pin successive actors round-robin to different Ray nodes.
        actor_options: extra ``.options(...)`` for the actors (default ``num_cpus=0.01``: a token
            amount, because Ray ignores soft node affinity for zero-resource actors).

    Raises:
        ImportError: Ray is not installed (``pip install "edil[ray]"``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, spread: bool = True, actor_options: dict[str, Any] | None = None) -> None:
        import ray

        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        self._remote = ray.remote(_NodeActor)
        self._actors: dict[str, Any] = {}
        self._attached: set[str] = set()
        self._spread = spread
        self._options = {"num_cpus": 0.01, "max_restarts": 0, **(actor_options or {})}
        self._next = 0

    def _ray_nodes(self) -> list[str]:
        return sorted(n["NodeID"] for n in self._ray.nodes() if n.get("Alive"))

    def launch(self, config: NodeConfig, coordinator: CoordinatorKeys) -> NodeCard:
        opts = dict(self._options)
        if self._spread:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            ids = self._ray_nodes()
            if ids:
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ids[self._next % len(ids)], soft=True)
                self._next += 1
        actor = self._remote.options(**opts).remote(config, coordinator)
        card: NodeCard = self._ray.get(actor.card.remote(), timeout=120)
        self._actors[card.address] = actor
        return card

    def attach(self, address: str, *, timeout_s: float = 120.0) -> NodeCard:
        """Reach a node its operator started with ``edil node serve`` (:func:`serve_node_on_ray`).

        The node's keys never leave its operator; the coordinator gets only its signed card
        (admit it with ``Scheduler.add_node``, which checks the card and the registry).

        Raises:
            RuntimeTaskError: no such node is served on the cluster.
        """
        try:
            actor = self._ray.get_actor(_actor_name(address), namespace=RAY_NAMESPACE)
        except ValueError:
            raise RuntimeTaskError(f"no node {address} is served on this Ray cluster (edil node serve)") from None
        card: NodeCard = self._ray.get(actor.card.remote(), timeout=timeout_s)
        if card.address.lower() != address.lower():
            raise RuntimeTaskError(f"the actor named for {address} serves {card.address}")
        self._actors[card.address] = actor
        self._attached.add(card.address)
        return card

    def placement(self, address: str) -> str:
        """The Ray node id hosting a node's actor."""
        return self._ray.get(self._actors[address].__ray_call__.remote(lambda self: __import__("ray").get_runtime_context().get_node_id()), timeout=30)

    def submit(self, address: str, envelope: bytes) -> Future[bytes]:
        actor = self._actors.get(address)
        if actor is None:
            fut: Future[bytes] = Future()
            fut.set_exception(RuntimeTaskError(f"node {address} is not running"))
            return fut
        return actor.handle.remote(envelope).future()

    def heartbeat(self, address: str, now_ms: int | None = None) -> bytes:
        return self._ray.get(self._actors[address].heartbeat.remote(now_ms), timeout=30)

    def kill(self, address: str) -> None:
        actor = self._actors.pop(address, None)
        if actor is not None:
            self._ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Stop the nodes this executor launched (nodes served by their operators keep running)."""
        for address in list(self._actors):
            if address in self._attached:
                self._actors.pop(address)
            else:
                self.kill(address)


def serve_node_on_ray(
    seed: bytes, coordinator: CoordinatorKeys, *, address: str | None = None, capabilities: Capabilities | None = None
) -> NodeCard:
    """Host this operator's node as a detached Ray actor on the Ray node this runs on.

    The secret seed goes to an actor pinned to this machine's Ray node; coordinators reach the
    node by its chain address with :meth:`RayExecutor.attach`. Serving the same identity again
    keeps the running actor when it already trusts ``coordinator`` and replaces it otherwise;
    an actor under this name that holds another identity is refused.

    Trust: Ray isolates nothing between the clients of one cluster (any client can run code in
    any actor, and the actor's creation arguments live in the cluster's control store), so the
    node's keys are only as private as the cluster. Serve on a cluster whose members the
    operator trusts with them, e.g. one run by the operator and its coordinator only.

    Args:
        seed: the node's secret identity seed (``edil node init`` writes one).
        coordinator: the coordinator's public keys and PoAI domain.
        address: Ray cluster address (``None``: the session already initialised, or a local one).
        capabilities: advertised capabilities (detected in the actor when omitted).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init(address=address, namespace=RAY_NAMESPACE, ignore_reinit_error=True, log_to_driver=False)
    ident = NodeIdentity.from_seed(seed)
    name = _actor_name(ident.address)
    try:
        actor = ray.get_actor(name, namespace=RAY_NAMESPACE)
    except ValueError:
        actor = None
    if actor is not None:
        running: NodeCard = ray.get(actor.card.remote(), timeout=120)
        if running.address.lower() != ident.address.lower():
            raise RuntimeTaskError(f"the Ray actor {name} serves {running.address}, not {ident.address}")
        if ray.get(actor.coordinator.remote(), timeout=120) != coordinator:
            ray.kill(actor, no_restart=True)  # it trusts another coordinator: start afresh
            actor = None
    if actor is None:
        here = ray.get_runtime_context().get_node_id()
        actor = (
            ray.remote(_NodeActor)
            .options(
                name=name, namespace=RAY_NAMESPACE, lifetime="detached", num_cpus=0.01, max_restarts=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            )
            .remote(NodeConfig(seed=seed, capabilities=capabilities), coordinator)
        )
    card: NodeCard = ray.get(actor.card.remote(), timeout=120)
    return card
