"""A connection's send queue, bounded in bytes: bulk waits, live and answers are refused."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from fieldsync.live.outbox import Outbox, OutboxClosedError, OutboxLimits
from fieldsync.observability.metrics import SendQueues

LIMITS = OutboxLimits(soft_bytes=100, hard_bytes=300, control_bytes=200)


async def test_bulk_waits_below_the_soft_bound_and_resumes_as_frames_go_out() -> None:
    outbox = Outbox(LIMITS)
    await outbox.put_bulk(b"a" * 150)  # an empty queue takes any frame
    assert not outbox.has_room
    waiting = asyncio.create_task(outbox.put_bulk(b"b" * 10))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert outbox.take(1) == [b"a" * 150]  # at least one frame, whatever the budget
    await asyncio.wait_for(waiting, 1)
    assert outbox.queued_bytes == 10


async def test_live_frames_are_refused_past_the_hard_bound_but_one_always_fits() -> None:
    outbox = Outbox(LIMITS)
    assert outbox.put_live(b"x" * 1000)  # larger than every bound, into an empty queue
    assert not outbox.put_live(b"y")
    outbox.take(1)
    assert outbox.put_live(b"y" * 300)
    assert not outbox.put_live(b"z")


async def test_answers_are_refused_only_past_hard_plus_control() -> None:
    outbox = Outbox(LIMITS)
    assert outbox.put_live(b"x" * 300)
    assert outbox.put_control(b"c" * 200)
    assert not outbox.put_control(b"c")
    assert outbox.queued_bytes == 500


async def test_wait_for_room_returns_once_drained_or_closed() -> None:
    outbox = Outbox(LIMITS)
    assert outbox.put_control(b"c" * 120)
    waiting = asyncio.create_task(outbox.wait_for_room())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    outbox.close()
    await asyncio.wait_for(waiting, 1)
    assert outbox.take(1000) == [b"c" * 120]  # queued frames still go out after close
    assert outbox.take(1000) == []
    with pytest.raises(OutboxClosedError):
        outbox.put_control(b"late")


async def test_frames_are_taken_oldest_first_in_batches_of_about_a_budget() -> None:
    outbox = Outbox(LIMITS)
    for size in (40, 40, 40, 200):
        assert outbox.put_control(bytes([size]) * size)
    assert [len(f) for f in outbox.take(100)] == [40, 40]
    assert [len(f) for f in outbox.take(100)] == [40]
    assert [len(f) for f in outbox.take(100)] == [200]  # one frame over the budget goes alone
    assert (outbox.take(100), outbox.queued_bytes) == ([], 0)


async def test_several_waiters_for_room_wake_and_a_cancelled_one_does_not_stop_others() -> None:
    outbox = Outbox(LIMITS)
    outbox.put_control(b"c" * 150)
    first = asyncio.create_task(outbox.wait_for_room())
    second = asyncio.create_task(outbox.wait_for_room())
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    outbox.take(1000)
    await asyncio.wait_for(second, 1)
    assert first.cancelled()


async def test_discarding_empties_the_byte_count() -> None:
    outbox = Outbox(LIMITS)
    outbox.put_control(b"a" * 50)
    outbox.put_live(b"b" * 60)
    assert outbox.discard_pending() == 2
    assert (len(outbox), outbox.queued_bytes, outbox.has_room) == (0, 0, True)


def test_limits_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="soft_bytes"):
        OutboxLimits(soft_bytes=10, hard_bytes=5)


def test_the_send_queue_gauges_count_only_queues_holding_frames() -> None:
    registry = CollectorRegistry()
    queues = SendQueues(registry)
    idle = [Outbox(LIMITS, queues) for _ in range(1000)]
    busy = Outbox(LIMITS, queues)
    assert len(queues._queues) == 0  # an idle connection's queue is never looked at
    assert busy.put_control(b"x" * 30)
    assert busy.put_control(b"y" * 20)
    other = idle[0]
    assert other.put_control(b"z" * 10)

    def gauge(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert gauge("fieldsync_send_queue_frames") == 3
    assert gauge("fieldsync_send_queue_bytes") == 60
    assert gauge("fieldsync_send_queue_max_frames") == 2
    assert gauge("fieldsync_send_queue_max_bytes") == 50
    assert other.take(1000) == [b"z" * 10]
    assert gauge("fieldsync_send_queue_frames") == 2
    assert len(queues._queues) == 1  # the scrape let go of the queue found empty
    busy.take(1000)
    assert gauge("fieldsync_send_queue_bytes") == 0
    assert busy.put_control(b"again")  # holding frames anew: counted anew
    assert gauge("fieldsync_send_queue_bytes") == 5
