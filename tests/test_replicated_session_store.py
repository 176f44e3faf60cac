"""A node's Replicated session store under concurrent messages (a node may handle several sessions at once)."""

from __future__ import annotations

import os
import threading

from edil import runtime as rt
from edil.proofs import Eip712Domain
from edil.runtime import _replicated_session as rs

DOMAIN = Eip712Domain("EDIL PoAI", "1", 1337, "0x" + "11" * 20)


def test_hellos_and_lookups_from_many_threads_keep_the_store_bounded_and_never_fail() -> None:
    coord = rt.CoordinatorIdentity.from_seed(b"store-coordinator" * 2)
    node = rt.EdgeNode(rt.NodeIdentity.from_seed(b"\x42" * 32), coordinator_key=coord.verify_key,
                       coordinator_box_key=coord.box_key, domain=DOMAIN)
    errors: list[BaseException] = []
    latest: dict[int, bytes] = {}

    def worker(w: int) -> None:
        try:
            for k in range(20):
                sid = bytes([w, k]) + os.urandom(30)
                reply = rs.handle(node, "rep_hello", {"session": sid, "party": k % 3, "version": rs.PROTOCOL_VERSION})
                assert isinstance(reply, bytes) and reply
                rs._sessions(node).get(sid)  # noqa: SLF001 - a step looking its session up meanwhile
                latest[w] = sid
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    store = rs._sessions(node)  # noqa: SLF001
    assert store is rs._sessions(node) and len(store._by_id) == min(8 * 20, rs._MAX_SESSIONS)  # noqa: SLF001 - the newest few are kept
    kept = next(iter(store._by_id))  # noqa: SLF001
    assert store.get(kept) is not None and store.pop(kept) is not None and store.get(kept) is None
    assert len(latest) == 8
