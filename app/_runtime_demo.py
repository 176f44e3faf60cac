"""The runtime step of ``edil demo``: the whole flow on a chain, with edge nodes and oracles.

1. A chain: the in-process EVM (default) or any JSON-RPC URL (anvil, or a development chain
   whose clock can be moved). The three contracts are deployed; 3 nodes and 2 oracles are
   admitted with a 2-of-2 quorum; a 4th, unregistered node is refused by dAuth.
2. The nodes run on an executor (``local`` threads, ``ray`` actors, or ``nats``: nats-server on
   loopback with node daemons as processes, see :mod:`edil.app._embedded`) behind a scheduler
   that journals every job to SQLite.
3. Workloads, each decoded and compared with plaintext: the digits MLP in plaintext (every
   task on 2 nodes, outputs compared), under ``Masked`` (one share per node, only openings
   exchanged), under ``CKKS`` (nodes get the public context only), and breast-cancer logistic
   regression under ``Paillier``.
4. Heartbeats to both oracles through the epoch (node 3 misses one slot), forged and
   unregistered heartbeats ignored and counted. With the ``nats`` executor the oracles are two
   ``edil oracle run --clock chain`` processes on a chain they reach (the demo's own anvil unless
   ``--chain URL``): for each slot the demo mines a block at the slot's time and each node daemon
   publishes its signed heartbeat on the bus itself; the oracle processes count them, agree, sign
   and store their attestations on the bus, and each node claims with them. The work and the
   availability then fall in the first epoch the oracle processes watch from its start.
5. Epoch close: every node posts its Merkle root, oracles audit sampled transcripts with
   randomness from the block after the root (recomputation, or replay for Masked parties),
   record the verdict, and each node claims its availability with both oracles' signatures.
6. The money: the client escrowed tokens for the epoch's work (each node's planned units are its
   journaled work), operators staked behind their nodes and a sponsor funded an availability
   reward pool; after the audit window each node is paid for its attested work units, a node
   whose audit failed is paid nothing (its share goes back to the client) and its stake is
   slashed, and the pool is split pro rata to the claimed availability. A fourth node, a cheater
   admitted like the others, runs one job of the epoch and returns a wrong output under its
   signed transcript: its audit fails, its stake is slashed and its escrow share is refunded.

Heartbeats are stamped with the chain's clock (a development chain's time moves only when a
block is mined), so the run takes seconds rather than a real epoch.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edil import AuthorizationError, EdilError, ParameterError, RuntimeTaskError
from edil.runtime import EPOCH_LENGTH_S, HEARTBEAT_S, beat_through_epoch, make_oracles

Row = dict[str, Any]

#: anvil's first documented development key (mnemonic "test test ... junk"); used only for
#: loopback URLs when no key is given. It never holds real value.
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_NODES = ("anvil", "hardhat", "ganache")


def _seed(label: str) -> bytes:
    from edil.proofs import keccak256

    return keccak256(b"EDIL/demo/" + label.encode())


def open_chain(url: str | None, keys: list[str] | None = None) -> Any:
    """The in-process chain, or a JSON-RPC chain with funded ``keys`` (anvil's dev key on loopback)."""
    from edil.proofs import Chain

    if url is None:
        return Chain.in_process()
    if not keys:
        from urllib.parse import urlparse

        if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise EdilError(f"--chain {url}: pass a funded private key (--chain-key or EDIL_CHAIN_KEY) for a non-local chain")
        keys = [ANVIL_DEV_KEY]
    chain = Chain.from_url(url, keys)
    try:
        version = str(chain.w3.client_version)
    except Exception as exc:  # noqa: BLE001 - any RPC failure: say which node and why
        raise EdilError(f"{url} does not tell its client version: {type(exc).__name__}") from None
    if not any(dev in version.lower() for dev in DEV_NODES):
        raise EdilError(
            f"the demo closes an epoch by moving the chain's clock, which only development nodes allow "
            f"({', '.join(DEV_NODES)}); {url} runs {version}"
        )
    return chain


def make_executor(kind: str, ray_address: str | None = None) -> Any:
    """The runtime executor ``kind`` (``"local"`` or ``"ray"``).

    Args:
        kind: ``"local"`` (threads in this process) or ``"ray"``.
        ray_address: the Ray cluster for ``"ray"`` (``None``, ``"auto"`` or ``"local"``: start or find one).

    Returns:
        A :class:`~edil.runtime.LocalExecutor` or :class:`~edil.runtime.RayExecutor`.

    Raises:
        ParameterError: an unknown ``kind``.
        RuntimeTaskError: ``ray_address`` is malformed, or no Ray cluster answers there.
        EdilError: Ray is not installed, or its cluster cannot be joined.
    """
    from edil.runtime import LocalExecutor, RayExecutor, check_ray_address

    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        if ray_address not in (None, "auto", "local"):
            check_ray_address(ray_address)
        try:
            return RayExecutor(ray_address)
        except ImportError:
            raise EdilError('the ray executor needs Ray: pip install "edil[ray]"') from None
        except ConnectionError as exc:
            raise EdilError(f"cannot join the Ray cluster at {ray_address}: {exc}") from None
    raise ParameterError(f"unknown executor {kind!r} (local or ray)")


def _gas_by_sender(chain: Any) -> Counter[str]:
    out: Counter[str] = Counter()
    for _, sender, gas in chain.gas_log:
        out[sender.lower()] += gas
    return out


#: Token amounts of the demo's economy (EDIL has 18 decimals).
DEPOSIT = 300 * 10**18
REWARD_POOL = 30 * 10**18
STAKE = 100 * 10**18


def _tokens(amount: int) -> str:
    return f"{amount / 10**18:,.2f}"


def _block_interval(chain: Any, seconds: int | None) -> None:
    """On anvil, let each block advance the clock by ``seconds`` only (``None``: by the wall clock
    again), so transactions sent while an epoch is played out keep the chain inside its slot."""
    method, params = ("anvil_removeBlockTimestampInterval", []) if seconds is None else ("anvil_setBlockTimestampInterval", [seconds])
    try:
        chain.w3.provider.make_request(method, params)
    except Exception:  # noqa: BLE001 - another development chain: its clock then follows the wall clock
        pass


def _beat_over_bus(ex: Any, chain: Any, dep: Any, cards: list[Any], epoch: int, stranger: Any, offline: Callable[[int, int], bool]) -> None:
    """Every slot of ``epoch`` on the chain's clock, heard by the oracle processes over the bus.

    For each slot the chain's clock is moved into the slot (a block at its first second, unless
    the chain is there already), then each node daemon signs a heartbeat for that time and
    publishes it on its own presence subject. In slot 5 the demo first publishes a heartbeat with a
    broken signature on node 3's subject and one from an unregistered node on its own. The clock
    moves on only once both oracle processes have judged every heartbeat of the slot (their
    running tallies), so none is judged against a later slot's time.

    Raises:
        RuntimeTaskError: the chain's clock is past a slot already (its heartbeats would be stale).
    """
    from edil.runtime import make_heartbeat

    start = dep.genesis_time + epoch * EPOCH_LENGTH_S
    sent = 0

    def judged(report: list[dict[str, Any]]) -> bool:
        totals = [x["tally"]["accepted"] + sum(x["tally"]["rejected"].values()) for x in report if x.get("tally", {}).get("epoch") == epoch]
        return bool(totals) and totals[-1] >= sent

    for slot in range(EPOCH_LENGTH_S // HEARTBEAT_S):
        begin = start + slot * HEARTBEAT_S
        now = chain.timestamp()
        if now < begin + 1:
            now = chain.advance_time(begin + 1 - now)
        if now >= begin + HEARTBEAT_S - 1:
            raise RuntimeTaskError(f"the chain's clock ({now}) is past slot {slot} of epoch {epoch} already")
        t = now * 1000 + 500
        if slot == 5:
            victim = cards[-1].address
            forged = bytearray(ex.heartbeat(victim, now_ms=t))  # signed by the daemon, not published by it
            forged[3] ^= 1
            ex.publish_heartbeat(victim, bytes(forged))
            ex.publish_heartbeat(stranger.address, make_heartbeat(stranger, seq=1, now_ms=t))
            sent += 2
        for k, c in enumerate(cards):
            if not offline(k, slot):
                ex.heartbeat(c.address, now_ms=t, publish=True)
                sent += 1
        ex.wait_oracles(judged, f"the heartbeats of slot {slot}", timeout_s=30.0)


def _serve_explorer(
    print_fn: Callable[[str], Any], details: dict[str, Any], port: int, until: threading.Event | None, **sources: Any
) -> None:
    """Serve the explorer over the demo's sources until ``until`` is set or Ctrl-C."""
    import uvicorn

    from edil.app._explorer import Explorer, explorer_app

    server = uvicorn.Server(uvicorn.Config(explorer_app(Explorer(**sources)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="edil-explorer", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeTaskError(f"the explorer could not listen on 127.0.0.1:{port}")
            time.sleep(0.05)
        bound = server.servers[0].sockets[0].getsockname()[1]
        details["explorer"] = url = f"http://127.0.0.1:{bound}/"
        print_fn(f"explorer: {url} (Ctrl-C stops it and the network)")
        try:
            while not (until is not None and until.wait(0.5)):
                if until is None:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    finally:
        server.should_exit = True
        thread.join(10.0)


def run_runtime_demo(
    print_fn: Callable[[str], Any] = print,
    *,
    chain_url: str | None = None,
    chain_keys: list[str] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    samples: int | None = None,
    paillier_key_bits: int = 2048,
    journal_path: str | Path | None = None,
    details: dict[str, Any] | None = None,
    serve_port: int | None = None,
    serve_until: threading.Event | None = None,
) -> list[Row]:
    """Run the runtime flow and return one summary row per scheme (see the module docstring).

    Args:
        chain_url: JSON-RPC URL; ``None`` for the in-process EVM, or with the ``nats`` executor an
            anvil that the demo starts and stops (:func:`edil.app._embedded.embedded_anvil`).
        chain_keys: funded private keys for ``chain_url`` (the first deploys and owns).
        executor: ``"local"``, ``"ray"`` or ``"nats"`` (nats-server, node daemons and oracles as processes, see :mod:`edil.app._embedded`).
        ray_address: Ray cluster address for the ``ray`` executor (``None``: start a local one).
        samples: limit the digits and breast-cancer samples (``None``: all).
        paillier_key_bits: Paillier modulus size.
        journal_path: SQLite journal file (default: a temporary one).
        details: filled with what happened on chain: ``refused`` (the unregistered node), ``cheater``
            (the address of the node that returned a wrong output), with the ``nats`` executor
            ``oracle_processes[oracle] = {pid, heartbeats, attested}`` (what each ``edil oracle run``
            process printed: its tally of the epoch's heartbeats and its stored attestations) and
            ``availability_domain`` (the ledger's EIP-712 domain they sign under), and
            ``heartbeats_rejected``, ``included`` (an inclusion proof checked on chain) and
            per node address ``nodes[a] = {tasks, work_units, verified, passed, availability,
            reward, gas, paid, avail_reward, stake, slashed}`` (token amounts in base units), and
            ``deposit`` / ``returned`` (the client's escrow and what came back to it).
        serve_port: once the money step is done, serve the explorer (:mod:`edil.app._explorer`) on
            ``127.0.0.1:serve_port`` over this run's chain, journal, node cards and oracles, with the
            nodes still up, until ``serve_until`` is set or Ctrl-C (``0``: a free port; the address
            is printed and put in ``details["explorer"]``).
        serve_until: stops the explorer of ``serve_port`` (``None``: only Ctrl-C does).

    Raises:
        ParameterError: an unknown ``executor`` (before any chain or journal is opened).
        RuntimeTaskError: with the ``nats`` executor and no ``chain_url``: anvil is not installed
            (``make install``); or a process of the embedded network did not start or answer.
    """
    if executor not in ("local", "ray", "nats"):
        raise ParameterError(f"unknown executor {executor!r} (local, ray or nats)")
    if executor == "nats" and chain_url is None:  # the oracle processes need a chain they reach: the demo's own anvil
        # (funded with anvil's development key on loopback: any chain_keys are for a --chain URL)
        from edil.app._embedded import embedded_anvil

        with embedded_anvil(print_fn=print_fn) as url:
            return run_runtime_demo(
                print_fn, chain_url=url, executor=executor, ray_address=ray_address, samples=samples, paillier_key_bits=paillier_key_bits,
                journal_path=journal_path, details=details, serve_port=serve_port, serve_until=serve_until,
            )
    details = {} if details is None else details
    from eth_account import Account
    from tqdm import tqdm

    from edil import CKKS, Masked, Paillier
    from edil.app._he_demo import breast_cancer_logreg, digits_mlp
    from edil.proofs import EpochStatus, keccak256
    from edil.runtime import (
        Capabilities,
        ChainRegistry,
        CoordinatorIdentity,
        Journal,
        NodeConfig,
        NodeIdentity,
        Scheduler,
        Task,
        array_from_bytes,
        audit_epoch,
        claim_from_bus,
        close_epoch,
        epoch_batch,
        make_heartbeat,
        settle_availability,
    )

    stages = tqdm(total=6, desc="runtime", unit="stage", leave=False, disable=None)  # nested: terminals only
    if print_fn is print:  # keep the progress bars intact under printed lines
        print_fn = tqdm.write  # noqa: PLW0127
    chain = open_chain(chain_url, chain_keys)
    owner = chain.default_account
    dep = chain.deploy(epoch_length=EPOCH_LENGTH_S)
    node_ids = [NodeIdentity.from_seed(_seed(f"node-{i}")) for i in range(3)]
    oracle_accts = [Account.from_key(_seed(f"oracle-{i}")) for i in range(2)]
    for ident in node_ids:
        dep.admit_node(ident.address)
        chain.fund(ident.address, 10**17)
    cheater = NodeIdentity.from_seed(_seed("cheater"))  # admitted like the others; it lies once at work
    dep.admit_node(cheater.address)
    chain.fund(cheater.address, 10**17)
    for acct in oracle_accts:
        dep.admit_oracle(acct.address)
    dep.set_quorum(2)
    where = "in-process EVM (py-evm)" if chain_url is None else chain_url
    print_fn(f"chain: {where}, chain id {chain.chain_id}; contracts {dep.addresses}")
    print_fn(f"admitted nodes {[i.address[:10] for i in (*node_ids, cheater)]}, oracles {[a.address[:10] for a in oracle_accts]}, quorum 2 of 2")
    stages.update()

    tmp = None
    if journal_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="edil-journal-")
        journal_path = Path(tmp.name) / "jobs.sqlite"
    journal = Journal(str(journal_path))
    if executor == "nats":  # the bus, node daemons and oracles as processes of their own (edil.app._embedded)
        from edil.app._embedded import embedded_executor

        if chain_url is None:  # not reached: the nats executor gets the demo's own anvil at the top
            raise EdilError("the oracle processes need a chain other processes reach (--chain URL)")
        ex = embedded_executor(dep, _seed("coordinator"), chain_id=chain.chain_id, chain_url=chain_url,
                               oracle_keys=[a.key for a in oracle_accts], print_fn=print_fn,
                               nodes=[NodeConfig(seed=_seed(f"node-{i}"), capabilities=Capabilities()) for i in range(3)])
    else:
        ex = make_executor(executor, ray_address)
    rows: list[Row] = []
    try:
        sched = Scheduler(
            ex, ChainRegistry(dep), journal, identity=CoordinatorIdentity.from_seed(_seed("coordinator")), domain=dep.poai_domain,
            epoch=dep.current_epoch, timeout_s=300.0,
        )
        # dev_clock: beat_through_epoch stamps each slot with the development chain's clock, which the demo moves.
        cards = [sched.launch(NodeConfig(seed=_seed(f"node-{i}"), capabilities=Capabilities(), dev_clock=True)) for i in range(3)]
        try:
            sched.launch(NodeConfig(seed=_seed("stranger"), capabilities=Capabilities()))
        except AuthorizationError as exc:
            details["refused"] = True
            print_fn(f"dAuth: {exc} -> refused")
        print_fn(f"executor: {ex.name}, {len(cards)} nodes up")
        processes = executor == "nats"  # availability from the oracle processes (edil.app._embedded)
        if processes:
            # Once both oracle processes know the daemons' cards, move the chain to the next epoch:
            # the first they watch from its start, so they attest it. Its blocks then move the clock
            # by a second each, so the work and the escrow stay in the epoch's first slot.
            skew = chain.timestamp() - time.time()
            if abs(skew) > 20:  # the daemons' announcements carry the wall clock: the oracles would refuse them as stale
                raise EdilError(f"the chain's clock is {skew:+.0f} s off the wall clock: run the demo on a fresh development chain")
            addresses = {c.address for c in cards}
            ex.wait_oracles(lambda r: addresses <= {x["card"] for x in r if "card" in x}, "the daemons' cards")
            dep.advance_to_epoch(dep.current_epoch() + 1)
            _block_interval(chain, 1)
            print_fn(f"epoch {dep.current_epoch()}: the oracle processes watch it from its start (the chain's clock)")
        epoch = dep.current_epoch()
        stages.update()

        xd, yd, _, mlp = digits_mlp()
        xb, yb, _, logreg = breast_cancer_logreg()
        if samples is not None:
            xd, yd, xb, yb = xd[:samples], yd[:samples], xb[:samples], yb[:samples]
        plain_d, plain_b = mlp.predict(xd), logreg.predict(xb)

        def measure(name: str, workload: str, y: np.ndarray, ref: np.ndarray, fn: Callable[[], np.ndarray]) -> None:
            before = (sched.stats["bytes_sent"], sched.stats["bytes_received"])
            t0 = time.perf_counter()
            pred = fn()
            seconds = time.perf_counter() - t0
            moved = sched.stats["bytes_sent"] - before[0] + sched.stats["bytes_received"] - before[1]
            rows.append({
                "scheme": f"runtime {name}", "workload": workload, "samples": len(y), "accuracy": float(np.mean(pred == y)),
                "agreement": float(np.mean(pred == ref)), "seconds": seconds, "bytes": int(moved),
            })

        def plain() -> np.ndarray:
            parts = np.array_split(np.arange(len(xd)), 4)
            jobs = sched.submit_many([Task.plain(mlp, xd[p], allow_plaintext=True) for p in parts], redundancy=2)
            sched.run()
            return mlp.labels(np.concatenate([array_from_bytes(sched.result(j)) for j in jobs]))

        def masked() -> np.ndarray:
            import jax

            scheme = Masked(3, key=jax.random.key(2026))
            return mlp.labels(scheme.decode(sched.run_masked(scheme, mlp, scheme.encode(xd))))

        def ckks() -> np.ndarray:
            scheme = CKKS.for_model(mlp)
            parts = np.array_split(np.arange(len(xd)), -(-len(xd) // scheme.slots))  # one ciphertext per feature per task
            jobs = sched.submit_many([Task.for_scheme(scheme, mlp, scheme.encode(xd[p]), model_public=True) for p in parts])
            sched.run()
            return mlp.labels(np.concatenate([scheme.decode(scheme.deserialize(sched.result(j))) for j in jobs]))

        def paillier() -> np.ndarray:
            scheme = Paillier(key_bits=paillier_key_bits)
            job = sched.submit(Task.for_scheme(scheme, logreg, scheme.encode(xb), model_public=True))
            sched.run()
            return logreg.labels(scheme.decode(scheme.deserialize(sched.result(job))))

        work = [
            ("plain r=2", "mlp/digits", yd, plain_d, plain),
            ("masked n=3", "mlp/digits", yd, plain_d, masked),
            ("ckks", "mlp/digits", yd, plain_d, ckks),
            ("paillier", "logreg/breast-cancer", yb, plain_b, paillier),
        ]
        for name, workload, y, ref, fn in tqdm(work, desc="tasks", unit="scheme", leave=False, disable=None):
            measure(name, workload, y, ref, fn)
        # The cheater joins after the measured workloads and runs one job pinned to it, whose
        # output it falsifies (with a transcript signed over the false output).
        import dataclasses

        from edil.runtime.testing import Faults, faulty

        sched.launch(faulty(NodeConfig(seed=_seed("cheater"), capabilities=Capabilities()), Faults("wrong")))
        sched.submit(dataclasses.replace(Task.plain(mlp, xd[:8], allow_plaintext=True), node=cheater.address))
        sched.run()
        details["cheater"] = cheater.address
        # The money: the client escrows the epoch's work, operators stake, a sponsor funds the pool.
        planned = {}
        for ident in (*node_ids, cheater):
            b = epoch_batch(journal, ident.address, epoch, dep.poai_domain)
            planned[ident.address] = 1 if b is None else max(1, b.work_units)
        job_id = keccak256(b"edil-demo-job/%d" % epoch)
        dep.mint(owner.address, DEPOSIT + REWARD_POOL + (len(node_ids) + 1) * STAKE)
        deadline = dep.genesis_time + (epoch + 1) * dep.epoch_length
        addrs = [i.address for i in (*node_ids, cheater)]
        dep.create_job(owner, job_id, epoch, addrs, [planned[a] for a in addrs], DEPOSIT, start_deadline=deadline)
        for a in addrs:
            dep.stake_tokens(owner, a, STAKE)
        dep.fund_reward_pool(owner, epoch, REWARD_POOL)
        print_fn(
            f"escrow: the client deposited {_tokens(DEPOSIT)} EDIL for epoch {epoch} "
            f"(planned work units {[planned[a] for a in addrs]}); stake {_tokens(STAKE)} EDIL per node; "
            f"availability pool {_tokens(REWARD_POOL)} EDIL"
        )
        for r in rows:
            print_fn(
                f"{r['scheme']:<20} {r['workload']:<21} accuracy {r['accuracy']:.4f}, agrees with plaintext on "
                f"{r['agreement']:.2%}, {r['seconds']:.2f} s, {r['bytes'] / 1e6:.1f} MB moved"
            )
        stages.update()

        # Proof-of-Availability: heartbeats through the epoch to both oracles.
        stranger = NodeIdentity.from_seed(_seed("stranger"))
        offline = lambda k, slot: k == 2 and slot == 3  # noqa: E731 - node 3 misses one slot
        oracles = [] if processes else make_oracles(dep, [acct.key for acct in oracle_accts], cards)

        def forged_and_stranger(slot: int, t: int, last: bytes) -> list[bytes]:
            if slot != 5:
                return []
            forged = bytearray(last)
            forged[3] ^= 1
            return [bytes(forged), make_heartbeat(stranger, seq=1, now_ms=t)]

        if processes:
            _beat_over_bus(ex, chain, dep, cards, epoch, stranger, offline)
            print_fn(f"heartbeats: the daemons published theirs for the {EPOCH_LENGTH_S // HEARTBEAT_S} slots of epoch {epoch} on the bus")
        else:
            beat_through_epoch(ex, cards, oracles, dep, epoch, offline=offline, extra=forged_and_stranger)
            details["heartbeats_rejected"] = dict(oracles[0].monitor.rejected)
            print_fn(f"heartbeats: {oracles[0].monitor.accepted} accepted, ignored {dict(oracles[0].monitor.rejected)} (per oracle)")
        stages.update()

        # Epoch close: roots, audits, availability claims.
        dep.advance_to_epoch(epoch + 1)
        if processes:
            _block_interval(chain, None)
        posted = {i.address: close_epoch(dep, journal, i.chain_key, i.address, epoch) for i in (*node_ids, cheater)}
        batches = {a: b for a, b in posted.items() if b is not None}
        chain.mine()  # the audit beacon is the block after the roots
        some = next(iter(batches.values()))
        included = dep.check_inclusion(some.node, epoch, some.digest(0), some.proof(0))
        # The audits are signed with the oracles' keys in this process (the oracle processes attest availability only).
        reports = {a: audit_epoch(dep, journal, b, [o.key for o in oracle_accts]) for a, b in batches.items()}
        avail = {}
        if processes:
            honest = {i.address.lower() for i in node_ids}

            def attested_all(report: list[dict[str, Any]]) -> bool:
                return honest <= {x["attested"]["node"].lower() for x in report if x.get("attested", {}).get("epoch") == epoch}

            seen = ex.wait_oracles(attested_all, f"their attestations of epoch {epoch}")
            details["availability_domain"] = dep.ledger_domain  # what the oracle processes' signatures are checked under
            procs = details["oracle_processes"] = {}
            for acct, proc, report in zip(oracle_accts, ex.oracles, seen, strict=True):
                atts = [x for x in report if x.get("attested", {}).get("epoch") == epoch]
                procs[acct.address] = {"pid": proc.pid, "heartbeats": atts[-1]["heartbeats"],
                                       "attested": {x["attested"]["node"]: x["attested"] for x in atts}}
            tally = procs[oracle_accts[0].address]["heartbeats"]
            details["heartbeats_rejected"] = tally["rejected"]
            print_fn(
                f"heartbeats stamped in epoch {epoch}: {tally['accepted']} counted, ignored {tally['rejected']} "
                f"(per oracle process; they attested and stored their signatures on the bus)"
            )
            for ident in node_ids:
                avail[ident.address] = claim_from_bus(dep, Account.from_key(ident.chain_key), ex.url, [epoch], identity=ident)[0]
        else:
            for ident in node_ids:
                avail[ident.address] = settle_availability(dep, Account.from_key(ident.chain_key), [epoch], oracles)[0]
        # Payment: a failed audit is slashed; after the audit and registration windows each slot is settled.
        slashed = {}
        for a in addrs:
            voided = dep.epoch_status(a, epoch) == EpochStatus.VOIDED
            before = dep.stake_of(a)
            if voided:
                dep.slash(a, epoch)
            slashed[a] = before - dep.stake_of(a)
            if dep.earned_availability(a, epoch) > 0:
                dep.register_for_reward(a, epoch)
        dep.advance_to_epoch(epoch + 2)
        token_before = {a: dep.token_balance(a) for a in addrs}
        paid = {}
        for a in addrs:
            dep.settle_job(job_id, a)
            paid[a] = dep.token_balance(a) - token_before[a]
        pool_reward = {}
        for a in addrs:
            before = dep.token_balance(a)
            if dep.earned_availability(a, epoch) > 0:
                dep.claim_reward(a, epoch)
            pool_reward[a] = dep.token_balance(a) - before
        # The client is also the treasury here, so what came back is read from the escrow, not its balance.
        returned = DEPOSIT - sum(paid.values()) - dep.job(job_id).remaining
        details["deposit"], details["returned"] = DEPOSIT, returned
        stages.update()

        gas = _gas_by_sender(chain)
        lines = [
            f"{'node':<12} {'tasks':>5} {'work units':>12} {'verified':>12} {'audit':<8} {'avail':>5} {'reward':>7} "
            f"{'paid EDIL':>10} {'pool EDIL':>10} {'stake EDIL':>11} {'slashed':>8} {'gas':>8}"
        ]
        avail[cheater.address] = 0  # it sent no heartbeats
        for ident in (*node_ids, cheater):
            a = ident.address
            b = batches.get(a)
            rep = reports.get(a)
            status = "-" if rep is None else ("passed" if rep.passed else "VOIDED")
            if rep is not None and dep.epoch_record(a, epoch).status == EpochStatus.VOIDED:
                status = "VOIDED"
            details.setdefault("nodes", {})[a] = {
                "tasks": 0 if b is None else b.task_count, "work_units": 0 if b is None else b.work_units,
                "verified": dep.verified_work_units(a, epoch), "passed": status == "passed", "availability": avail[a],
                "reward": dep.reward_units(a), "gas": gas[a.lower()], "paid": paid[a], "avail_reward": pool_reward[a],
                "stake": dep.stake_of(a), "slashed": slashed[a],
            }
            lines.append(
                f"{a[:10]:<12} {0 if b is None else b.task_count:>5} {0 if b is None else b.work_units:>12,} "
                f"{dep.verified_work_units(a, epoch):>12,} {status:<8} {avail[a]:>5} {float(dep.reward_units(a)):>7.3f} "
                f"{_tokens(paid[a]):>10} {_tokens(pool_reward[a]):>10} {_tokens(dep.stake_of(a)):>11} {_tokens(slashed[a]):>8} "
                f"{gas[a.lower()]:>8,}"
            )
        details["included"] = included
        print_fn(f"epoch {epoch} closed; transcript 0 of {some.node[:10]} included on chain: {included}")
        print_fn("\n".join(lines))
        print_fn(
            f"cheater {cheater.address[:10]}: audit failed, {_tokens(slashed[cheater.address])} EDIL of its stake slashed, "
            f"paid {_tokens(paid[cheater.address])} EDIL: its escrow share went back to the client"
        )
        print_fn(
            f"client: deposited {_tokens(DEPOSIT)} EDIL, paid out {_tokens(sum(paid.values()))} EDIL for attested work, "
            f"{_tokens(returned)} EDIL came back (unattested or failed shares)"
        )
        print_fn(f"gas: coordinator/owner {gas[owner.address.lower()]:,} (deploy, admissions, funding, audit records)")
        stages.update()
        if serve_port is not None:
            stages.close()
            _serve_explorer(print_fn, details, serve_port, serve_until, deployment=dep, journal=journal, cards=cards,
                            monitors=[o.monitor for o in oracles], clock=chain.timestamp)
    finally:
        stages.close()
        ex.close()
        journal.close()
        if tmp is not None:
            tmp.cleanup()
    return rows
