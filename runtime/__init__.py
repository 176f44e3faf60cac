"""edil.runtime: edge nodes, the scheduler, executors, dAuth gating, PoA heartbeats, the journal.

The flow::

    from edil import runtime as rt
    coord = rt.CoordinatorIdentity.generate()
    sched = rt.Scheduler(rt.LocalExecutor(), registry, rt.Journal("jobs.sqlite"),
                         identity=coord, domain=deployment.poai_domain)
    sched.launch(rt.NodeConfig(seed=node_seed))           # refused unless the registry admits it
    job = sched.submit(rt.Task.plain(model, x, allow_plaintext=True), redundancy=2)
    sched.run()
    y = rt.array_from_bytes(sched.result(job))

    y_shared = sched.run_masked(masked, model, masked.encode(x))   # one share per node
    y_rep = sched.run_replicated(replicated, model, replicated.encode(x))   # three nodes, no dealer

Registries: :class:`StaticRegistry` (in memory) or :class:`ChainRegistry` (the on-chain
NodeRegistry). Executors: :class:`LocalExecutor` (default), :class:`RayExecutor` or
:class:`NatsExecutor` (node daemons in their own processes over NATS). Epoch
configuration and the heartbeat pump: :func:`make_oracles`, :func:`beat_through_epoch`. Fault
injection for tests and drills: :mod:`edil.runtime.testing` (not imported here). Encrypted,
content-addressed files (R1FS): :class:`R1FS` on :class:`LocalBlobStore` or :class:`NatsBlobStore`.
Services (Deeploy): owner-signed :class:`ServiceSpec` placed by a :class:`Reconciler`.
"""

from ._availability import (
    AvailabilityOracle,
    Heartbeat,
    HeartbeatMonitor,
    agree,
    make_heartbeat,
    parse_heartbeat,
    settle_availability,
)
from ._deeploy import (
    PlacementChange,
    Reconciler,
    Resources,
    ServiceSpec,
    ServiceState,
    SignedRemoval,
    SignedServiceSpec,
    service_id_of,
)
from ._epochs import AuditReport, audit_epoch, close_epoch, epoch_batch
from ._executor import CoordinatorKeys, Executor, LocalExecutor, NodeConfig, RayExecutor, check_ray_address, serve_node_on_ray
from ._federated import FedTrainRunner, RuntimeRound, fed_task, train_federated
from ._identity import Capabilities, CoordinatorIdentity, NodeCard, NodeIdentity, detect_capabilities
from ._journal import JobRecord, Journal, ResultRecord, ServiceRecord
from ._nats import BusAdmission, NatsExecutor, NatsServer, check_nats_url, node_status, run_daemon, serve_node
from ._node import EdgeNode
from ._oracle import NatsOracle, SignedAvailability, claim_from_bus, oracle_nkey_public, oracle_nkey_seed
from ._presence import Presence, make_announcement
from ._pump import EPOCH_LENGTH_S, HEARTBEAT_S, beat_through_epoch, make_oracles
from ._r1fs import (
    R1FS,
    BlobStore,
    FileEntry,
    FileManifest,
    GcReport,
    LocalBlobStore,
    NatsBlobStore,
    ObjectNotFoundError,
    content_id,
    parse_cid,
)
from ._registry import ChainRegistry, Registry, StaticRegistry
from ._replicated_service import SealedSession, open_sealed_session, run_sealed_session
from ._scheduler import Scheduler
from ._task import (
    PlainRunner,
    Runner,
    SchemeContract,
    SchemeRunner,
    Task,
    array_from_bytes,
    array_to_bytes,
    default_runners,
    model_from_bytes,
    model_to_bytes,
)
from ._transport import Message, ReplayGuard, open_envelope, seal_envelope

__all__ = [
    "AuditReport",
    "AvailabilityOracle",
    "BusAdmission",
    "Capabilities",
    "ChainRegistry",
    "CoordinatorIdentity",
    "CoordinatorKeys",
    "EPOCH_LENGTH_S",
    "EdgeNode",
    "Executor",
    "FedTrainRunner",
    "HEARTBEAT_S",
    "Heartbeat",
    "HeartbeatMonitor",
    "JobRecord",
    "Journal",
    "LocalExecutor",
    "NatsExecutor",
    "NatsOracle",
    "NatsServer",
    "Message",
    "NatsBlobStore",
    "ObjectNotFoundError",
    "R1FS",
    "BlobStore",
    "FileEntry",
    "FileManifest",
    "GcReport",
    "LocalBlobStore",
    "NodeCard",
    "NodeConfig",
    "NodeIdentity",
    "Presence",
    "PlainRunner",
    "PlacementChange",
    "Reconciler",
    "Resources",
    "ServiceRecord",
    "ServiceSpec",
    "ServiceState",
    "SignedRemoval",
    "SignedServiceSpec",
    "RayExecutor",
    "Registry",
    "ReplayGuard",
    "ResultRecord",
    "Runner",
    "RuntimeRound",
    "Scheduler",
    "SealedSession",
    "SchemeContract",
    "SchemeRunner",
    "SignedAvailability",
    "StaticRegistry",
    "Task",
    "agree",
    "array_from_bytes",
    "array_to_bytes",
    "audit_epoch",
    "beat_through_epoch",
    "check_nats_url",
    "check_ray_address",
    "claim_from_bus",
    "close_epoch",
    "content_id",
    "default_runners",
    "detect_capabilities",
    "epoch_batch",
    "fed_task",
    "make_announcement",
    "make_heartbeat",
    "make_oracles",
    "model_from_bytes",
    "model_to_bytes",
    "node_status",
    "oracle_nkey_public",
    "oracle_nkey_seed",
    "open_envelope",
    "open_sealed_session",
    "parse_cid",
    "parse_heartbeat",
    "run_daemon",
    "run_sealed_session",
    "seal_envelope",
    "serve_node",
    "serve_node_on_ray",
    "service_id_of",
    "settle_availability",
    "train_federated",
]
