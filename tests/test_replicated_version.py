"""The Replicated session protocol's version: agreed at ``rep_hello``, so parties of different versions
(different pairwise stream derivations) are refused before a session starts, never midway."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edil import RuntimeTaskError, SerializationError
from edil import _replicated as rep
from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime import _replicated_session as rs
from tests.test_replicated_runtime import relu_net, scheduler, scheme

V = rs.PROTOCOL_VERSION
#: The pair-key and PRF tags each protocol version derives its pairwise streams with. A new derivation
#: changes its tag: this table (and the test below) then asks for a new :data:`rs.PROTOCOL_VERSION`.
DERIVATIONS = {2: (b"EDIL/replicated/pair-key/v2", b"EDIL/replicated/prf-key/aes-128-ctr/v2")}
#: What a hello's version field may hold that is not an int: each one is "no protocol version".
NOT_INTS: tuple[Any, ...] = (None, str(V), float(V), True, [V], b"\x02")


def test_the_version_names_the_stream_derivations_the_parties_use() -> None:
    assert isinstance(V, int) and not isinstance(V, bool)
    assert (rep._PAIR_TAG, rep._PRF_TAG) == DERIVATIONS[V]  # noqa: SLF001


def _node() -> tuple[rt.EdgeNode, rt.CoordinatorIdentity]:
    coord = rt.CoordinatorIdentity.from_seed(b"version-coordinator-" * 2)
    node = rt.EdgeNode(rt.NodeIdentity.from_seed(b"\x44" * 32), coordinator_key=coord.verify_key,
                       coordinator_box_key=coord.box_key, domain=Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20))
    return node, coord


def test_a_node_refuses_a_hello_of_another_version_or_none_and_keeps_no_session() -> None:
    node, coord = _node()
    for other in (V - 1, V + 1, 0, -1, 1 << 40):
        with pytest.raises(SerializationError, match=f"protocol version {other} requested, this node speaks {V}$"):
            rs.handle(node, "rep_hello", {"session": b"a" * 32, "party": 0, "version": other})
    for bad in NOT_INTS:
        with pytest.raises(SerializationError, match=f"names no protocol version \\(an int\\), this node speaks {V}$"):
            rs.handle(node, "rep_hello", {"session": b"a" * 32, "party": 0, "version": bad})
    with pytest.raises(SerializationError, match=f"names no protocol version \\(an int\\), this node speaks {V}$"):
        rs.handle(node, "rep_hello", {"session": b"a" * 32, "party": 0})  # an older coordinator names none
    assert rs.open_sessions(node) == 0  # a refused hello draws no key and holds nothing

    reply = rs.handle(node, "rep_hello", {"session": b"a" * 32, "party": 0, "version": V})
    msg = rt.open_envelope(reply, box_key=coord.box, trusted=(node.card.signing_key,), guard=rt.ReplayGuard(120_000),
                           now_ms=int(time.time() * 1000))
    assert msg.kind == "rep_hello" and msg.body["version"] == V and type(msg.body["version"]) is int
    assert rs.open_sessions(node) == 1


def test_a_coordinator_of_another_version_is_refused_at_the_hello_with_both_versions_named() -> None:
    sched, ex, journal, _ = scheduler(3)
    send = sched._send  # noqa: SLF001
    hellos: list[Any] = []

    def older(addr: str, kind: str, body: Any) -> Any:  # a coordinator one version behind its nodes
        if kind == "rep_hello":
            body = {**body, "version": V - 1}
            hellos.append(body)
        return send(addr, kind, body)

    sched._send = older  # type: ignore[method-assign]  # noqa: SLF001
    try:
        s = scheme(21)
        with pytest.raises(RuntimeTaskError, match=f"protocol version {V - 1} requested, this node speaks {V}"):
            sched.run_replicated(s, relu_net(), s.encode(np.zeros((1, 6))), job_id="rep-old-coordinator")
        assert hellos and journal.results() == []
    finally:
        ex.close()


def test_the_coordinator_blames_a_hello_reply_of_another_version_or_none() -> None:
    nodes = ["0x" + f"{i:040x}" for i in (1, 2, 3)]
    good = {"session": b"s" * 32, "version": V, "public": b"\x09" * 32, "signature": b"\x00" * 65}
    cases: list[tuple[Any, str]] = [({**good, "version": V - 1}, f"protocol version {V - 1}"),
                                    ({**good, "version": V + 1}, f"protocol version {V + 1}"),
                                    ({k: v for k, v in good.items() if k != "version"}, "no protocol version (an int)"),
                                    ([V], "no protocol version (an int)")]  # not even a map
    cases += [({**good, "version": bad}, "no protocol version (an int)") for bad in NOT_INTS]
    for body, spoken in cases:
        replies = [SimpleNamespace(kind="rep_hello", body=b) for b in (body, good, good)]
        # checked before the key (not signed here): the version is what the party is blamed for
        got = rs._hello_replies(None, b"s" * 32, "", nodes, replies)  # noqa: SLF001
        assert got == rs._Blame(nodes[0], f"party {nodes[0]}: its hello names {spoken}, this coordinator speaks {V}",  # noqa: SLF001
                                fault=False)


class _OlderNode(rt.EdgeNode):
    """A node whose hello reply names what a node of another version names: ``version`` set to ``value``
    (``None``: left out, as a node from before the version was exchanged)."""

    value: Any = V - 1

    def _reply(self, kind: str, body: Any) -> bytes:
        if kind == "rep_hello":
            body = {k: v for k, v in body.items() if k != "version"}
            if self.value is not None:
                body["version"] = self.value
        return super()._reply(kind, body)


class _UnversionedNode(_OlderNode):
    value = None


@pytest.mark.parametrize("node", [_OlderNode, _UnversionedNode])
def test_a_node_of_another_version_is_left_out_at_the_hello_and_the_session_runs_without_it(node: type) -> None:
    model = relu_net()
    x = np.random.default_rng(22).normal(size=(2, 6))
    sched, ex, journal, addrs = scheduler(4, factories={0: node})  # the older node is placed first
    bad = addrs[0]
    try:
        s = scheme(22)
        y = sched.run_replicated(s, model, s.encode(x), job_id="rep-older-node")
        np.testing.assert_allclose(s.decode(y), model.forward(x), atol=1e-3)  # the three current nodes ran it
        assert bad not in journal.results()[-1].nodes
        # another release is not a fault: the node is suspended, nothing is recorded against it
        assert journal.faults(bad) == []
        assert sched.stats["protocol_version"] == 1 and sched.stats.get("byzantine", 0) == 0
    finally:
        ex.close()
