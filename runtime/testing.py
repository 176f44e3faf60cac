"""Fault injection for tests and chaos drills: nodes that crash, hang, lie or tamper.

Production nodes (:class:`~edil.runtime.EdgeNode`) carry no fault switches; a misbehaving node
is a :class:`FaultyNode`, started through any executor with :func:`faulty`::

    from edil.runtime.testing import Faults, faulty

    sched.launch(faulty(rt.NodeConfig(seed=seed), Faults("wrong")))   # a byzantine node
    ex.node(address).faults = Faults("crash", after=1)               # a FaultyNode, later

Faults act only on authentic coordinator messages (the envelope checks of the node come
first), as a compromised operator's node would.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edil import EdilError, ParameterError

from ._executor import NodeConfig
from ._node import EdgeNode
from ._task import array_from_bytes, array_to_bytes

__all__ = ["FaultyNode", "Faults", "faulty"]

_MODES = ("crash", "hang", "wrong", "tamper", "tamper_xor", "product", "equivocate")


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour.

    Attributes:
        mode: ``"crash"`` (raise), ``"hang"`` (sleep ``hang_s`` then answer late),
            ``"wrong"`` (return a wrong output, with a transcript signed over it: byzantine) or
            ``"tamper"`` (a Masked party shifts every contribution it sends, then computes its
            output share honestly from the openings: the result is wrong, its output looks right)
            or ``"tamper_xor"`` (the same, only for the XOR-opened words of a secure comparison)
            or ``"product"`` (a Masked party takes its first ring product off by one in one entry,
            commits to that product and computes everything else honestly from it: the epoch
            audit's one-round check of the committed product fails)
            or ``"equivocate"`` (a party of a direct Masked session sends its lowest-index peer a shifted
            contribution and every other peer the protocol's, each signed, and commits to the
            protocol's: peers open different values).
        after: behave honestly for this many tasks first.
        hang_s: how long a hang lasts (bounded, so test threads always finish).

    Raises:
        ParameterError: an unknown ``mode``.
    """

    mode: str
    after: int = 0
    hang_s: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ParameterError(f"unknown fault mode {self.mode!r} (one of {', '.join(_MODES)})")


def _corrupt(output: bytes) -> bytes:
    """A different output of the same shape where possible (so only a check of the value catches it)."""
    try:
        arr = array_from_bytes(output)
        if arr.dtype == np.uint64:  # a ring share: shift the value by 16.0 at 16 fractional bits
            with np.errstate(over="ignore"):
                return array_to_bytes(arr + np.uint64(1 << 20))
        return array_to_bytes(arr + np.ones_like(arr))
    except EdilError:  # not a tensor (e.g. a ciphertext): flip one bit
        return output[:-1] + bytes([output[-1] ^ 1]) if output else b"\x01"


def _shift(contribution: bytes, *, xor_only: bool = False) -> bytes:
    """A Masked contribution shifted by 2^40 in the ring (a large, consistent lie); with ``xor_only``,
    bit 0 of its XOR-opened words flipped instead (a comparison's bit), the rest left honest."""
    from edil.hazmat import mpc

    from ._mpc_session import _arrays_from_bytes, _arrays_to_bytes

    arrays = _arrays_from_bytes(contribution)
    kinds = mpc.kinds_of(arrays)
    with np.errstate(over="ignore"):
        if xor_only:
            return _arrays_to_bytes(mpc.Tagged([a ^ np.uint64(1) if k == mpc.XOR else a for a, k in zip(arrays, kinds)], kinds))
        return _arrays_to_bytes(mpc.Tagged([a + np.uint64(1 << 40) for a in arrays], kinds))


class FaultyNode(EdgeNode):
    """An :class:`~edil.runtime.EdgeNode` that misbehaves as ``faults`` says (honest while ``None``).

    Args:
        *args, **kwargs: those of :class:`~edil.runtime.EdgeNode`.
        faults: the misbehaviour; the attribute may be changed while the node runs.
    """

    def __init__(self, *args: Any, faults: Faults | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults = faults

    def _active(self) -> Faults | None:
        f = self.faults
        return f if f is not None and self.completed >= f.after else None

    def _before_work(self) -> None:
        f = self._active()
        if f is None:
            return
        if f.mode == "crash":
            raise RuntimeError(f"node {self.address} crashed (injected fault)")
        if f.mode == "hang":
            time.sleep(f.hang_s)

    def _outgoing(self, kind: str, data: bytes) -> bytes:
        f = self._active()
        if f is None:
            return data
        if f.mode == "wrong" and kind in ("result", "mpc_result"):
            return _corrupt(data)
        if f.mode == "tamper" and kind == "mpc_contrib":
            return _shift(data)
        if f.mode == "tamper_xor" and kind == "mpc_contrib":
            return _shift(data, xor_only=True)
        return data

    def _to_peer(self, data: bytes, party: int, peer: int) -> bytes:
        f = self._active()
        lowest = 1 if party == 0 else 0  # its lowest-index peer gets the lie, the others the protocol's
        return _shift(data) if f is not None and f.mode == "equivocate" and peer == lowest else data

    def _claimed_product(self, index: int, c: Any) -> Any:
        f = self._active()
        if f is None or f.mode != "product" or index != 0 or not np.size(c):
            return c
        lie = np.array(c, dtype=np.uint64, copy=True)
        with np.errstate(over="ignore"):
            lie.flat[0] += np.uint64(1)
        return lie


def faulty(config: NodeConfig, faults: Faults | None) -> NodeConfig:
    """``config`` whose node is a :class:`FaultyNode` with ``faults`` (on any executor).

    Args:
        config: the node's configuration.
        faults: the misbehaviour (``None``: honest, until the node's ``faults`` is set).

    Returns:
        A copy of ``config`` that builds the faulty node.
    """
    return dataclasses.replace(config, node_factory=functools.partial(FaultyNode, faults=faults))
