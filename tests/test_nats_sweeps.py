"""The sweeps' pulls (``_StoredPull``): what a durable consumer holds now, and no pull left waiting.

Node daemons and the coordinator take the stored copies of tasks and replies this way between their
live traffic; a pull that waited at the server would hand the stored copy of the next live task to
the node while that task computes. What must still hold: everything stored is taken (in batches),
a message pulled and left unacknowledged (a node killed mid-task) is taken again once its
acknowledgement wait is over, and a pull on an empty consumer returns at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from edil import runtime as rt
from edil.runtime import _nats

STREAM, SUBJECT, DURABLE = "SWEEP_TEST", "sweep.test", "sweeper"


@pytest.fixture(scope="module")
def server():
    with rt.NatsServer() as s:
        yield s


def _with_consumer(url: str, body: Callable[[Any, Any], Awaitable[Any]], *, ack_wait_s: float = 30.0) -> Any:
    """Run ``body(nc, js)`` against a fresh work-queue stream and its durable pull consumer."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    async def main() -> Any:
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            try:
                await js.delete_stream(STREAM)
            except Exception:  # noqa: BLE001 - absent on the first test
                pass
            await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], retention=RetentionPolicy.WORK_QUEUE))
            await js.pull_subscribe(
                SUBJECT, durable=DURABLE, stream=STREAM,
                config=ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s),
            )
            return await body(nc, js)
        finally:
            await nc.close()

    return asyncio.run(main())


def test_a_pull_takes_what_is_stored_in_batches_and_returns_at_once_when_empty(server) -> None:
    async def body(nc: Any, js: Any) -> None:
        for i in range(5):
            await js.publish(SUBJECT, f"m{i}".encode())
        pull = _nats._StoredPull(nc, STREAM, DURABLE)
        first = await pull.fetch(2)
        rest = await pull.fetch(16)
        assert [m.data for m in first + rest] == [f"m{i}".encode() for i in range(5)]  # all, in order, each once
        for m in first + rest:
            await m.ack()
        t0 = time.monotonic()
        assert await pull.fetch(16, timeout_s=5.0) == []
        assert time.monotonic() - t0 < 2.0  # answered at once by the server, not after the 5 s bound
        await pull.close()

    _with_consumer(server.url, body)


def test_no_pull_waits_for_what_is_stored_after_it(server) -> None:
    async def body(nc: Any, js: Any) -> None:
        pull = _nats._StoredPull(nc, STREAM, DURABLE)
        assert await pull.fetch(16) == []
        await js.publish(SUBJECT, b"later")  # stored after the sweep: nobody is waiting for it
        await asyncio.sleep(0.3)
        info = await js.consumer_info(STREAM, DURABLE)
        assert info.num_waiting == 0 and info.num_pending == 1 and info.num_ack_pending == 0
        assert pull._sub.pending_msgs == 0  # not delivered to this process
        (msg,) = await pull.fetch(16)  # the next sweep takes it
        assert msg.data == b"later"
        await msg.ack()
        await pull.close()

    _with_consumer(server.url, body)


def test_a_pulled_message_left_unacknowledged_is_taken_again_after_ack_wait(server) -> None:
    """A node killed after pulling a task never acknowledges it: a later sweep (its restart's) takes it again."""

    async def body(nc: Any, js: Any) -> None:
        await js.publish(SUBJECT, b"task")
        pull = _nats._StoredPull(nc, STREAM, DURABLE)
        (first,) = await pull.fetch(16)
        assert await pull.fetch(16) == []  # delivered, not yet due again
        deadline = time.monotonic() + 10.0
        again: list[Any] = []
        while not again and time.monotonic() < deadline:
            await asyncio.sleep(0.25)  # the sweep period
            again = await pull.fetch(16)
        assert [m.data for m in again] == [b"task"]
        assert again[0].metadata.num_delivered == 2 and again[0].metadata.sequence.stream == first.metadata.sequence.stream
        await again[0].ack()
        await asyncio.sleep(1.5)
        assert await pull.fetch(16) == []  # acknowledged: gone from the work queue
        await pull.close()

    _with_consumer(server.url, body, ack_wait_s=1.0)


def test_a_stopping_node_hands_back_what_it_pulled_and_did_not_run(server) -> None:
    """``nak``, as a stopping node's sweep does: the next pull (the node's return) takes it at once, not after ack_wait."""

    async def body(nc: Any, js: Any) -> None:
        await js.publish(SUBJECT, b"task")
        pull = _nats._StoredPull(nc, STREAM, DURABLE)
        (msg,) = await pull.fetch(16)
        await msg.nak()
        await asyncio.sleep(0.2)
        (again,) = await pull.fetch(16)  # ack_wait is 30 s: only the nak makes it due now
        assert again.data == b"task" and again.metadata.num_delivered == 2
        await again.ack()
        await pull.close()

    _with_consumer(server.url, body)
