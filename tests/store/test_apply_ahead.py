"""Applying ahead of the lock in one task, an item per turn (``store.apply_ahead``), and the
change log handing what it applied ahead to the merge under the lock."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.append_plan import merge_batch
from fieldsync.store.apply_ahead import ApplyAhead
from fieldsync.store.changelog import ChangeLog
from fieldsync.store.records import Accepted
from tests.entities import location_values, new_id


async def test_the_loop_gets_a_turn_between_items() -> None:
    """A group's statement answer waits one item's apply at most, not a whole push's."""
    events: list[str] = []

    def apply_one(key: str, item: int) -> int:
        events.append(f"apply {item}")
        return item * 10

    ahead: ApplyAhead[str, int, int] = ApplyAhead(apply_one)

    async def other_work() -> None:
        for _ in range(8):
            events.append("turn")
            await asyncio.sleep(0)

    first = asyncio.ensure_future(ahead.apply("p", [1, 2, 3]))
    second = asyncio.ensure_future(ahead.apply("q", [4, 5]))
    ticking = asyncio.ensure_future(other_work())
    assert await first == [10, 20, 30]
    assert await second == [40, 50]
    await ticking
    applies = [i for i, event in enumerate(events) if event.startswith("apply")]
    assert [events[i] for i in applies] == [f"apply {n}" for n in (1, 2, 3, 4, 5)]
    for before, after in itertools.pairwise(applies):
        assert "turn" in events[before + 1 : after], events


async def test_callers_come_out_in_the_order_they_came_in() -> None:
    """Even one with nothing to apply waits its turn: a client's pipelined pushes reach the
    project's lock in the order it sent them."""
    ahead: ApplyAhead[str, int, int] = ApplyAhead(lambda key, item: item)
    out: list[str] = []

    async def caller(name: str, items: list[int]) -> None:
        await ahead.apply(name, items)
        out.append(name)

    await asyncio.gather(caller("a", [1, 2]), caller("b", []), caller("c", [3]))
    assert out == ["a", "b", "c"]


async def test_a_caller_that_goes_away_leaves_its_items_and_the_next_is_served() -> None:
    applied: list[int] = []

    def apply_one(key: str, item: int) -> int:
        applied.append(item)
        return item

    ahead: ApplyAhead[str, int, int] = ApplyAhead(apply_one)
    leaving = asyncio.ensure_future(ahead.apply("a", [1, 2, 3, 4, 5, 6]))
    staying = asyncio.ensure_future(ahead.apply("b", [7]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying == [7]
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert applied[-1] == 7
    assert len(applied) < 7, applied  # not every item of the caller that left


async def test_an_error_is_its_callers_alone() -> None:
    def apply_one(key: str, item: str) -> str:
        if item == "bad":
            raise ValueError("cannot apply")
        return item.upper()

    ahead: ApplyAhead[str, str, str] = ApplyAhead(apply_one)
    failing = asyncio.ensure_future(ahead.apply("a", ["x", "bad", "y"]))
    fine = asyncio.ensure_future(ahead.apply("b", ["z"]))
    with pytest.raises(ValueError, match="cannot apply"):
        await failing
    assert await asyncio.wait_for(fine, 5) == ["Z"]


async def test_a_worker_cancelled_at_shutdown_cancels_what_waits() -> None:
    """Nobody is left waiting for an apply that will never come."""
    ahead: ApplyAhead[str, int, int] = ApplyAhead(lambda key, item: item)
    first = asyncio.ensure_future(ahead.apply("a", [1, 2, 3]))
    second = asyncio.ensure_future(ahead.apply("b", [4]))
    await asyncio.sleep(0)
    worker = ahead._worker  # the one task; a loop shutting down cancels it with the rest
    assert worker is not None
    worker.cancel()
    for waiting in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 5)


async def test_the_change_log_merges_with_what_it_applied_ahead(
    pool: Any, project: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was applied ahead reaches the merge under the lock, entity by entity."""
    handed: list[set[str]] = []

    def watched(*args: Any) -> Any:
        handed.append(set(args[-1]))
        return merge_batch(*args)

    monkeypatch.setattr("fieldsync.store.changelog.merge_batch", watched)
    batch = []
    for n in range(3):
        _, change = create_entity("location", location_values(n))
        batch.append(EntityChanges("location", new_id(), [change]))
    results = await ChangeLog(pool).append(project, batch, "s")
    assert all(isinstance(result, Accepted) and result.seqs for result in results)
    assert handed == [{item.entity_id for item in batch}]
