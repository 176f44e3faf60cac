"""edil.runtime: edge nodes, the scheduler, executors, dAuth gating, PoA heartbeats, the journal.

The flow::

    from edil import runtime as rt
    coord = rt.CoordinatorIdentity.generate()
    sched = rt.Scheduler(rt.LocalExecutor(), registry, rt.Journal("jobs.sqlite"),
                         identity=coord, domain=deployment.poai_domain)
    sched.launch(rt.NodeConfig(seed=node_seed))           # refused unless the registry admits it
    job = sched.submit(rt.Task.plain(model, x), redundancy=2)
    sched.run()
    y = rt.array_from_bytes(sched.result(job))

    y_shared = sched.run_masked(masked, model, masked.encode(x))   # one share per node

Registries: :class:`StaticRegistry` (in memory) or :class:`ChainRegistry` (the on-chain
NodeRegistry). Executors: :class:`LocalExecutor` (default) or :class:`RayExecutor`.
"""

from ._availability import AvailabilityOracle, ChainRegistry, Heartbeat, HeartbeatMonitor, Registry, agree, make_heartbeat, parse_heartbeat, settle_availability
from ._epochs import AuditReport, audit_epoch, close_epoch, epoch_batch
from ._federated import FedTrainRunner, RuntimeRound, fed_task, train_federated
from ._executor import CoordinatorKeys, Executor, LocalExecutor, NodeConfig, RayExecutor, serve_node_on_ray
from ._identity import Capabilities, CoordinatorIdentity, NodeCard, NodeIdentity, detect_capabilities
from ._journal import JobRecord, Journal, ResultRecord
from ._node import EdgeNode, Faults
from ._scheduler import Scheduler, StaticRegistry
from ._task import PlainRunner, Runner, SchemeRunner, Task, array_from_bytes, array_to_bytes, default_runners, model_from_bytes, model_to_bytes
from ._transport import Message, ReplayGuard, open_envelope, seal_envelope

__all__ = [
    "AuditReport",
    "AvailabilityOracle",
    "Capabilities",
    "ChainRegistry",
    "CoordinatorIdentity",
    "CoordinatorKeys",
    "EdgeNode",
    "Executor",
    "Faults",
    "FedTrainRunner",
    "Heartbeat",
    "HeartbeatMonitor",
    "JobRecord",
    "Journal",
    "LocalExecutor",
    "Message",
    "NodeCard",
    "NodeConfig",
    "NodeIdentity",
    "PlainRunner",
    "RayExecutor",
    "Registry",
    "ReplayGuard",
    "ResultRecord",
    "RuntimeRound",
    "Runner",
    "Scheduler",
    "SchemeRunner",
    "StaticRegistry",
    "Task",
    "agree",
    "array_from_bytes",
    "array_to_bytes",
    "audit_epoch",
    "close_epoch",
    "default_runners",
    "detect_capabilities",
    "epoch_batch",
    "fed_task",
    "make_heartbeat",
    "model_from_bytes",
    "model_to_bytes",
    "open_envelope",
    "parse_heartbeat",
    "seal_envelope",
    "serve_node_on_ray",
    "settle_availability",
    "train_federated",
]
