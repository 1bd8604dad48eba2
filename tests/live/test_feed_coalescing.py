"""A project's feed hands on the commits made within one turn of the event loop together:
one message per subscriber for all of them, in seq order, nothing twice, nothing lost."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.live.feed import LivePiece, ProjectFeed
from fieldsync.store.records import LoggedChange, LogSlice

pytestmark = pytest.mark.asyncio


async def _no_reads(project_id: uuid.UUID, cursor: int, limit: int) -> LogSlice:
    raise AssertionError(f"the feed read the log from {cursor}; commits it held were enough")


def _commit(first: int, count: int) -> LogSlice:
    return LogSlice(
        [
            LoggedChange(s, "activity", f"a{s}", s.to_bytes(32, "big"), b"c")
            for s in range(first, first + count)
        ]
    )


class _Subscriber:
    """A subscriber that keeps what it was handed (its cursor follows)."""

    def __init__(self, project_id: uuid.UUID, cursor: int) -> None:
        self.project_id = project_id
        self.cursor = cursor
        self.received: list[LivePiece] = []

    def deliver(self, piece: LivePiece) -> None:
        self.received.append(piece)
        self.cursor = piece.prepared.last_seq


def _subscribe(feed: ProjectFeed, cursor: int) -> list[LivePiece]:
    subscriber = _Subscriber(feed.project_id, cursor)
    assert feed.try_go_live(subscriber)
    return subscriber.received


def _seqs(pieces: list[LivePiece]) -> list[int]:
    return [record.seq for piece in pieces for record in piece.prepared.records]


async def test_commits_of_one_turn_go_out_as_one_message_to_each_subscriber() -> None:
    feed = ProjectFeed(uuid.uuid4(), _no_reads)
    first, second = _subscribe(feed, 0), _subscribe(feed, 0)
    for start in (1, 3, 4):  # a group commit of three pushes: 2, 1 and 2 changes
        feed.committed(_commit(start, 2 if start != 3 else 1))
    assert first == []
    assert second == []
    await asyncio.sleep(0)
    assert len(first) == 1
    assert first[0] is second[0]
    assert _seqs(first) == [1, 2, 3, 4, 5]
    feed.committed(_commit(6, 1))
    await asyncio.sleep(0)
    assert _seqs(first) == [1, 2, 3, 4, 5, 6]
    assert len(first) == 2


@settings(max_examples=60, deadline=None)
@given(turns=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=4), min_size=1, max_size=6))
async def test_every_commit_arrives_once_in_order_however_commits_fall_into_turns(
    turns: list[list[int]],
) -> None:
    feed = ProjectFeed(uuid.uuid4(), _no_reads)
    received = _subscribe(feed, 0)
    seq = 0
    for turn in turns:
        for size in turn:
            feed.committed(_commit(seq + 1, size))
            seq += size
        await asyncio.sleep(0)
    assert _seqs(received) == list(range(1, seq + 1))
    assert len(received) <= len(turns) * 2  # at most one message per turn (plus size splits)


class _Log:
    """A project's log that other processes append to; reads can be held mid-flight."""

    def __init__(self) -> None:
        self.head = 0
        self.reads: list[int] = []  # the cursor of each read
        self.hold: asyncio.Event | None = None

    def append(self, count: int) -> int:
        self.head += count
        return self.head

    async def read(self, project_id: uuid.UUID, cursor: int, limit: int) -> LogSlice:
        self.reads.append(cursor)
        end = self.head  # what the read's snapshot holds: commits after it are not seen
        if self.hold is not None:
            await self.hold.wait()
        return _commit(cursor + 1, min(end - cursor, limit))


async def test_pointers_that_arrive_together_share_one_read() -> None:
    log = _Log()
    feed = ProjectFeed(uuid.uuid4(), log.read)
    received = _subscribe(feed, 0)
    for _ in range(3):  # three commits of other processes, their NOTIFYs in one turn
        feed.poke(log.append(1))
    log.hold = asyncio.Event()
    await asyncio.sleep(0)
    assert log.reads == [0]
    for _ in range(4):  # four more arrive while that read is under way
        feed.poke(log.append(2))
    log.hold.set()
    for _ in range(5):
        await asyncio.sleep(0)
    # The first read's snapshot had 3 changes; one more read takes all four later commits.
    assert log.reads == [0, 3]
    assert _seqs(received) == list(range(1, 12))
    feed.poke(log.head)  # a late NOTIFY of something dispatched already: no read
    assert log.reads == [0, 3]
    feed.poke(log.append(1))
    feed.poke(log.append(1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert log.reads == [0, 3, 11]
    assert _seqs(received) == list(range(1, 14))
