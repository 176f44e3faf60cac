"""The federated round engine: one round loop, whatever carries the updates.

A logical round (:meth:`RoundEngine.round`) is the same for every transport:

1. open a protocol round among the participants under a fresh round id (so fresh masks);
2. ask the transport for every participant's reply: in-process, the worker objects
   (:class:`~edil.federated.FederatedTrainer`); through the runtime, ``fedtrain`` tasks pinned
   to the nodes (:func:`edil.runtime.train_federated`);
3. validate each reply: the transport decodes it (and vouches for its sender when it
   authenticates senders itself), the :class:`~edil.federated.Coordinator` checks signature,
   round, sender, scheme, dtype, shape, finiteness and range. A reply that fails any check is a
   *refused update*: its sender counts as a dropout and the refusal is recorded
   (:class:`UpdateFault`, in the round's :class:`RoundRecord` and through the transport, e.g.
   the runtime's journal). It never aborts training;
4. dropouts: under ``"recover"`` the survivors reveal their mask seeds with the dropped workers;
   under ``"redo"`` the protocol round is abandoned and run again among the survivors under a
   fresh round id;
5. combine the accepted updates, apply their weighted mean to the head, and record the round.

A refused sender is never recovered by seed reveals, whatever the dropout policy: the
coordinator holds the bytes it sent, which may be a genuine masked update damaged in one field,
and the survivors' reveals would unmask them. The round is redone among the others instead. A
survivor whose seed reveal is refused is treated the same way (dropped, recorded, round redone).

Only a round left with fewer than two participants raises
(:class:`~edil.RuntimeTaskError`): one update alone would be seen in the clear.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from edil._errors import AuthorizationError, EdilError, ParameterError, RuntimeTaskError

if TYPE_CHECKING:  # the engine only calls methods of these; importing them would be circular
    from edil.federated import Coordinator, Head, RoundContext, SeedReveal, Update

__all__ = ["RoundEngine", "RoundRecord", "RoundTransport", "UpdateFault"]

_R = TypeVar("_R", bound="RoundRecord")

#: What a refused reply may raise while it is decoded and checked. Untrusted bytes should only
#: ever raise :class:`~edil.EdilError`; the builtins are listed so that a decoder that still
#: leaks one on crafted input costs its sender the round, not the whole training.
_REFUSED = (EdilError, ValueError, TypeError, OverflowError)


@dataclass(frozen=True)
class UpdateFault:
    """A participant's message that was refused; the participant counted as a dropout.

    Attributes:
        round_id: the protocol round the message was for.
        worker_id: who sent it.
        reason: the error's type and message.
    """

    round_id: int
    worker_id: str
    reason: str


@dataclass(frozen=True)
class RoundRecord:
    """One logical round: who took part, who arrived, accuracy after it, time and upload bytes.

    Attributes:
        round: the logical round index.
        round_ids: every protocol round id it took (more than one after a redo).
        participants: the workers asked at the start.
        survivors: the workers whose updates were combined.
        accuracy: the head's accuracy on the evaluation data after the round, if any.
        seconds: wall time of the round, local training included.
        bytes: upload bytes of every accepted update (and seed reveal) of every attempt.
        faults: the refused messages of the round, in order.
    """

    round: int
    round_ids: tuple[int, ...]
    participants: tuple[str, ...]
    survivors: tuple[str, ...]
    accuracy: float | None
    seconds: float
    bytes: int
    faults: tuple[UpdateFault, ...] = field(default=())


class RoundTransport(Protocol):
    """How one logical round's messages reach the participants and come back.

    Attributes:
        authenticates_senders: True when the transport itself guarantees who sent each reply
            (the runtime: the scheduler keeps a reply only with a transcript signed by the node
            the task was pinned to), so the engine skips the update's own Ed25519 signature;
            False when every update must carry a signature that the coordinator verifies.
    """

    authenticates_senders: bool

    def collect(self, ctx: RoundContext) -> Mapping[str, Any]:
        """Send ``ctx`` to its participants and return the raw reply of each that answered.

        A participant missing from the result dropped out (crashed, timed out, refused to answer).
        """
        ...

    def decode(self, ctx: RoundContext, worker_id: str, reply: Any) -> Update:
        """Turn ``worker_id``'s raw reply into an :class:`~edil.federated.Update`.

        Raises:
            EdilError: the reply is malformed (the engine refuses it and records a fault).
        """
        ...

    def refused(self, ctx: RoundContext, fault: UpdateFault) -> None:
        """Record a refused message wherever this transport keeps faults (it may do nothing)."""
        ...

    def reveals(self, ctx: RoundContext, dropped: Sequence[str], survivors: Sequence[str]) -> Sequence[SeedReveal] | None:
        """Every survivor's seed reveal for every dropped worker, or None if this transport cannot
        collect them (the engine then redoes the round)."""
        ...


class RoundEngine:
    """Runs logical federated rounds through a :class:`RoundTransport` (see the module docstring).

    Args:
        coordinator: the round state machine and validator; its aggregation is the round's scheme.
        dropout: ``"recover"`` (survivors reveal seeds with dropped workers, when the transport
            can collect reveals) or ``"redo"`` (the round is run again among the survivors).
        clock: seconds for :attr:`RoundRecord.seconds` (injected so tests can fix it).

    Raises:
        ParameterError: an unknown dropout policy.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        dropout: Literal["recover", "redo"] = "recover",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if dropout not in ("recover", "redo"):
            raise ParameterError(f"dropout must be 'recover' or 'redo', got {dropout!r}")
        self.coordinator = coordinator
        self.dropout = dropout
        self.clock = clock

    def round(
        self,
        index: int,
        head: Head,
        weights: Mapping[str, float],
        transport: RoundTransport,
        *,
        eval_data: tuple[Any, Any] | None = None,
    ) -> tuple[Head, RoundRecord]:
        """Run logical round ``index`` among ``weights`` (worker id -> public weight) from ``head``.

        Returns:
            ``(new_head, record)``.

        Raises:
            RuntimeTaskError: fewer than 2 participants are left to finish the round.
        """
        t0 = self.clock()
        coord = self.coordinator
        participants = dict(weights)
        round_ids: list[int] = []
        faults: list[UpdateFault] = []
        nbytes = 0
        while True:
            if len(participants) < 2:
                raise RuntimeTaskError(f"round {index}: fewer than 2 workers left")
            ctx = coord.open_round(participants)
            round_ids.append(ctx.round_id)
            replies = transport.collect(ctx)
            refused: set[str] = set()
            for wid in ctx.participants:
                if wid not in replies:
                    continue
                try:
                    update = transport.decode(ctx, wid, replies[wid])
                    sender = getattr(update, "worker_id", None)
                    if sender != wid:
                        raise AuthorizationError(f"the reply of {wid!r} is not an update from it (sender {sender!r})")
                    if transport.authenticates_senders:
                        coord._admit(update)
                    else:
                        coord.receive(update)
                except _REFUSED as exc:
                    refused.add(wid)
                    self._refuse(transport, ctx, wid, exc, faults)
                    continue
                nbytes += update.nbytes
            gone = set(coord.missing())
            if not gone:
                mean, _ = coord.finish()
                break
            if self._recover(coord.aggregation.needs_reveals, ctx, gone, refused):
                reveals: Sequence[SeedReveal] | None = ()
                if coord.aggregation.needs_reveals:
                    survivors = [p for p in ctx.participants if p not in gone]
                    reveals = transport.reveals(ctx, sorted(gone), survivors)
                    if reveals is not None:
                        reveals, unusable = self._check_reveals(transport, ctx, reveals, sorted(gone), survivors, faults)
                        gone |= unusable
                if reveals is not None and gone == set(coord.missing()):
                    mean, _ = coord.finish(reveals)
                    nbytes += sum(len(r.seed) + len(r.signature) for r in reveals)
                    break
            coord.abandon()  # run it again without the gone workers (their masks would never cancel)
            participants = {w: v for w, v in participants.items() if w not in gone}
        head = head.unflatten(head.flatten() + mean)
        acc = head.accuracy(*eval_data) if eval_data is not None else None
        survivors_ = tuple(w for w in weights if w in participants and w not in gone)
        return head, RoundRecord(
            index, tuple(round_ids), tuple(weights), survivors_, acc, self.clock() - t0, nbytes, tuple(faults)
        )

    def _refuse(
        self, transport: RoundTransport, ctx: RoundContext, wid: str, exc: BaseException, faults: list[UpdateFault]
    ) -> None:
        fault = UpdateFault(ctx.round_id, wid, f"{type(exc).__name__}: {exc}")
        faults.append(fault)
        transport.refused(ctx, fault)

    def _recover(self, needs_reveals: bool, ctx: RoundContext, gone: set[str], refused: set[str]) -> bool:
        """Whether to finish this protocol round despite ``gone`` rather than redo it."""
        if self.dropout != "recover" or len(ctx.participants) - len(gone) < 2:
            return False
        return not (needs_reveals and refused)  # reveals would unmask the refused bytes we hold

    def _check_reveals(
        self,
        transport: RoundTransport,
        ctx: RoundContext,
        got: Sequence[SeedReveal],
        dropped: list[str],
        survivors: list[str],
        faults: list[UpdateFault],
    ) -> tuple[list[SeedReveal], set[str]]:
        """The valid reveals, and the survivors that must count as gone (a refused or missing reveal)."""
        ok: dict[tuple[str, str], SeedReveal] = {}
        bad: set[str] = set()
        for r in got:
            try:
                self.coordinator._check_reveal(r)
            except _REFUSED as exc:
                sender = str(getattr(r, "worker_id", "?"))
                bad.add(sender)
                self._refuse(transport, ctx, sender, exc, faults)
                continue
            ok[(r.worker_id, r.dropped)] = r
        unusable = {s for s in survivors if s in bad or any((s, d) not in ok for d in dropped)}
        return [r for r in ok.values() if r.worker_id not in unusable], unusable

    def run(
        self,
        indices: range,
        step: Callable[[int], _R],
        *,
        label: str,
        progress: bool = False,
        print_fn: Callable[[str], None] | None = None,
    ) -> list[_R]:
        """Call ``step(r)`` for each logical round ``r`` in ``indices``, with a progress bar and a line per round.

        Args:
            indices: the rounds to run (``range(start, rounds)``; a resumed run starts late).
            step: runs round ``r`` (typically through :meth:`round`) and returns its record.
            label: the progress bar's description.
            progress: show a tqdm progress bar with the latest accuracy (terminals only).
            print_fn: called with one line per finished round, after ``step`` returned.

        Returns:
            The records, in order.
        """
        from tqdm import tqdm

        history = []
        bar = tqdm(indices, desc=label, unit="round", disable=None if progress else True)
        for r in bar:
            rec = step(r)
            history.append(rec)
            if rec.accuracy is not None:
                bar.set_postfix(accuracy=f"{rec.accuracy:.4f}")
            if print_fn is not None:
                acc = "" if rec.accuracy is None else f" accuracy {rec.accuracy:.4f}"
                refused = f", {len(rec.faults)} refused" if rec.faults else ""
                with tqdm.external_write_mode():  # keep the bar intact under printed lines
                    print_fn(
                        f"round {r + 1}/{indices.stop}:{acc} ({len(rec.survivors)}/{len(rec.participants)} "
                        f"workers{refused}, {rec.seconds:.3f} s, {rec.bytes} bytes)"
                    )
        return history
