"""Reads shared by resuming clients (``live.log_reads``), the membership cache and the load
gate, without a server: each answer is the one a read of its own would have given."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.live.admission import Refusal
from fieldsync.live.load_gate import (
    ROOM_REASON,
    STALL_SECONDS,
    TURN_NOT_REACHED,
    LoadGate,
    LoadLimits,
)
from fieldsync.live.log_reads import CatchUpReads, HeadReads, after
from fieldsync.live.membership_cache import MembershipCache
from fieldsync.store.errors import StoreError
from fieldsync.store.records import ConflictUpdate, LoggedChange, LogSlice

PROJECT = uuid.uuid4()


def _log(head: int) -> list[LoggedChange]:
    return [LoggedChange(s, "location", f"e{s}", bytes(32), b"c") for s in range(1, head + 1)]


class _Log:
    """A project's log read the way the store reads it; counts the reads."""

    def __init__(self, head: int) -> None:
        self.changes = _log(head)
        self.updates = [ConflictUpdate(s, f"f{s}", None) for s in range(3, head + 1, 3)]
        self.reads = 0

    async def read(self, project: uuid.UUID, cursor: int, limit: int) -> LogSlice:
        self.reads += 1
        await asyncio.sleep(0)  # others ask meanwhile
        changes = [c for c in self.changes if c.seq > cursor][:limit]
        if not changes:
            return LogSlice([])
        end = changes[-1].seq
        return LogSlice(changes, [u for u in self.updates if cursor < u.seq <= end])


@settings(max_examples=60, deadline=None)
@given(
    head=st.integers(0, 40),
    limit=st.integers(1, 12),
    cursors=st.lists(st.integers(0, 40), min_size=1, max_size=30),
)
def test_every_waiter_gets_what_its_own_read_would_return(
    head: int, limit: int, cursors: list[int]
) -> None:
    async def check() -> None:
        log = _Log(head)
        shared = CatchUpReads(log.read, limit)
        wanted = [min(c, head) for c in cursors]
        got = await asyncio.gather(*(shared.catch_up(PROJECT, c) for c in wanted))
        for cursor, piece in zip(wanted, got, strict=True):
            own = await _Log(head).read(PROJECT, cursor, limit)
            # A shared read may stop earlier than the waiter's own, never differ in what
            # it holds, and is empty only where the log ends.
            assert list(piece.changes) == list(own.changes)[: len(piece.changes)]
            assert bool(piece.changes) == bool(own.changes)
            last = piece.changes[-1].seq if piece.changes else cursor
            assert list(piece.conflicts) == [u for u in own.conflicts if u.seq <= last]
        assert log.reads <= len(wanted)

    asyncio.run(check())


async def test_a_crowd_at_similar_cursors_costs_one_read() -> None:
    log = _Log(30)
    shared = CatchUpReads(log.read, 500)
    pieces = await asyncio.gather(*(shared.catch_up(PROJECT, 20 + n % 10) for n in range(200)))
    assert log.reads == 1
    assert [len(p.changes) for p in pieces[:10]] == [10 - n for n in range(10)]


async def test_a_failed_read_fails_its_waiters_and_the_next_read_is_fresh() -> None:
    failing = True

    async def read(project: uuid.UUID, cursor: int, limit: int) -> LogSlice:
        await asyncio.sleep(0)
        if failing:
            raise OSError("database down")
        return LogSlice(_log(5)[cursor:])

    shared = CatchUpReads(read, 100)
    got = await asyncio.gather(
        *(shared.catch_up(PROJECT, 1) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(g, OSError) for g in got)
    failing = False
    assert [c.seq for c in (await shared.catch_up(PROJECT, 3)).changes] == [4, 5]


def test_the_part_after_a_cursor_keeps_only_later_conflict_updates() -> None:
    piece = LogSlice(_log(6)[2:], [ConflictUpdate(4, "a", None), ConflictUpdate(6, "b", None)])
    cut = after(piece, 4)
    assert [c.seq for c in cut.changes] == [5, 6]
    assert [u.conflict_id for u in cut.conflicts] == ["b"]
    assert after(piece, 2) is piece


async def test_a_head_read_is_shared_and_a_cursor_beyond_it_is_checked_afresh() -> None:
    heads = iter([10, 12])
    reads = 0

    async def read(project: uuid.UUID) -> int:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0)
        return next(heads)

    shared = HeadReads(read)
    assert await asyncio.gather(*(shared.at_least(PROJECT, 9) for _ in range(50))) == [10] * 50
    assert reads == 1
    assert await shared.at_least(PROJECT, 11) == 12  # the shared read said 10: read again
    assert reads == 2


class _Members:
    def __init__(self) -> None:
        self.rows: dict[tuple[uuid.UUID, uuid.UUID], str] = {}
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.asked = asyncio.Event()
        self.batches: list[list[tuple[uuid.UUID, uuid.UUID]]] = []
        self.failure: Exception | None = None

    async def level(self, project_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
        self.reads += 1
        self.asked.set()
        level = self.rows.get((project_id, user_id))
        await self.gate.wait()
        return level

    async def levels(
        self, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]
    ) -> dict[tuple[uuid.UUID, uuid.UUID], str]:
        self.reads += 1
        self.batches.append(list(pairs))
        self.asked.set()
        found = {pair: self.rows[pair] for pair in pairs if pair in self.rows}
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return found

    async def still_member_of(
        self, user_id: uuid.UUID, project_ids: object
    ) -> set[uuid.UUID]:  # pragma: no cover - not asked here
        raise AssertionError


async def test_memberships_are_read_once_remembered_and_forgotten_on_removal() -> None:
    members = _Members()
    now = [0.0]
    cache = MembershipCache(members, ttl=30.0, clock=lambda: now[0])
    user = uuid.uuid4()
    members.rows[(PROJECT, user)] = "lead"
    assert await asyncio.gather(*(cache.level(PROJECT, user) for _ in range(20))) == ["lead"] * 20
    assert members.reads == 1
    del members.rows[(PROJECT, user)]
    assert await cache.level(PROJECT, user) == "lead"  # remembered...
    cache.forget(PROJECT, user)
    assert await cache.level(PROJECT, user) is None  # ...until the removal is heard
    assert await cache.level(PROJECT, user) is None  # "not a member" is never remembered
    assert members.reads == 3
    members.rows[(PROJECT, user)] = "viewer"
    assert await cache.level(PROJECT, user) == "viewer"
    now[0] = 31.0
    assert await cache.level(PROJECT, user) == "viewer"
    assert members.reads == 5  # read again once older than the ttl


def _a_lead_whose_reads_are_held() -> tuple[_Members, MembershipCache, uuid.UUID]:
    """A cache over storage where a user leads PROJECT; reads wait until ``gate`` is set."""
    members = _Members()
    user = uuid.uuid4()
    members.rows[(PROJECT, user)] = "lead"
    members.gate.clear()
    return members, MembershipCache(members), user


async def test_a_read_under_way_when_a_removal_is_heard_is_not_remembered() -> None:
    members, cache, user = _a_lead_whose_reads_are_held()
    reading = asyncio.create_task(cache.level(PROJECT, user))
    await members.asked.wait()  # the read has begun
    cache.forget_all()  # e.g. the listener reconnected: notices may have been missed
    members.gate.set()
    assert await reading == "lead"
    del members.rows[(PROJECT, user)]
    assert await cache.level(PROJECT, user) is None


async def test_questions_asked_together_are_read_together_in_batches() -> None:
    members = _Members()
    cache = MembershipCache(members, max_read=100)
    users = [uuid.uuid4() for _ in range(250)]
    for user in users[::2]:
        members.rows[(PROJECT, user)] = "editor"
    answers = await asyncio.gather(*(cache.level(PROJECT, user) for user in users))
    assert answers == ["editor" if i % 2 == 0 else None for i in range(len(users))]
    assert [len(batch) for batch in members.batches] == [100, 100, 50]
    assert sorted(pair for batch in members.batches for pair in batch) == sorted(
        (PROJECT, user) for user in users
    )


async def test_questions_asked_while_a_read_is_under_way_share_the_next_read() -> None:
    members = _Members()
    cache = MembershipCache(members)
    first, second, third = (uuid.uuid4() for _ in range(3))
    for user in (first, second, third):
        members.rows[(PROJECT, user)] = "viewer"
    members.gate.clear()
    asked = [asyncio.create_task(cache.level(PROJECT, first))]
    await members.asked.wait()  # the first read has begun
    asked += [asyncio.create_task(cache.level(PROJECT, u)) for u in (second, third, first)]
    await asyncio.sleep(0)
    members.gate.set()
    assert await asyncio.gather(*asked) == ["viewer"] * 4
    # The first user's second question shared the read under way; the others the next one.
    assert members.batches == [[(PROJECT, first)], [(PROJECT, second), (PROJECT, third)]]


async def test_an_asker_that_goes_away_leaves_the_others_their_answer() -> None:
    members, cache, user = _a_lead_whose_reads_are_held()
    leaving = asyncio.create_task(cache.level(PROJECT, user))
    staying = asyncio.create_task(cache.level(PROJECT, user))
    await members.asked.wait()
    leaving.cancel()
    members.gate.set()
    assert await staying == "lead"
    assert leaving.cancelled()
    assert members.reads == 1


async def test_a_failed_read_fails_its_askers_and_the_next_question_is_read_afresh() -> None:
    members = _Members()
    cache = MembershipCache(members)
    users = [uuid.uuid4() for _ in range(3)]
    for user in users:
        members.rows[(PROJECT, user)] = "lead"
    members.failure = StoreError("reading memberships: connection lost")
    outcomes = await asyncio.gather(
        *(cache.level(PROJECT, user) for user in users), return_exceptions=True
    )
    assert all(isinstance(outcome, StoreError) for outcome in outcomes)
    members.failure = None
    assert await cache.level(PROJECT, users[0]) == "lead"
    assert members.reads == 2


async def test_a_member_removed_during_a_read_is_read_again_when_asked() -> None:
    members, cache, user = _a_lead_whose_reads_are_held()
    before = asyncio.create_task(cache.level(PROJECT, user))
    await members.asked.wait()  # the read has seen the row
    del members.rows[(PROJECT, user)]
    cache.forget(PROJECT, user)  # the removal notice, while the read is under way
    after_removal = asyncio.create_task(cache.level(PROJECT, user))
    await asyncio.sleep(0)
    members.gate.set()
    assert await before == "lead"
    assert await after_removal is None  # not the read under way: a read of its own
    assert members.reads == 2
    assert await cache.level(PROJECT, user) is None  # and nothing was remembered


def test_the_gate_refuses_over_its_bounds_and_spreads_the_refused() -> None:
    held = [0]
    limits = LoadLimits(max_in_progress=10, min_in_progress=5, assumed_rate=100.0)
    gate = LoadGate(lambda: held[0], limits)
    assert gate.room == 10  # 300 at 100 a second within 3 s, but at most 10
    assert gate.refusal() is None
    held[0] = 6
    for _ in range(4):
        gate.stream_started()
    refusal = gate.refusal()
    assert refusal is not None
    assert (refusal.status, refusal.reason) == (503, "resumes_in_progress")
    hints = [gate.retry_after() for _ in range(500)]
    assert hints[0] == 1
    assert hints == sorted(hints)  # later refusals get later turns
    # 10 held and 500 turns at 100 a second: the last turn about 5.1 s away; the SDKs wait
    # the hint and a quarter more on average, so the hint is 4 (5.1 / 1.25 = 4.08).
    assert hints[-1] == 4
    gate.lag = 2.0  # a crowd makes the loop late by itself: the turns already count it
    assert gate.retry_after() == 4
    gate.lag = 0.0
    gate.stream_ended(live=True)
    held[0] = 0
    assert gate.refusal() is None
    gate.lag = 3.0
    # Late, but with few resumes under way: refusing would leave it nothing to finish.
    assert gate.refusal() is None
    held[0] = limits.min_in_progress - 3
    lagging = gate.refusal()
    assert lagging is not None
    assert lagging.reason == "event_loop_lag"


def test_the_room_and_the_hints_follow_the_rate_measured_while_full() -> None:
    now = [0.0]
    limits = LoadLimits(max_in_progress=1_000, min_in_progress=10, assumed_rate=100.0)
    gate = LoadGate(lambda: 0, limits, clock=lambda: now[0])
    assert gate.room == 300  # 100 a second, 3 s
    for _ in range(300):
        gate.stream_started()
    # Two seconds with room say nothing of what the process can do.
    for _ in range(40):
        gate.went_live()
    now[0] = 2.0
    assert gate.retry_after() == 2  # 300 held at 100 a second: 3.01 s away, hinted / 1.25
    assert gate.room == 300
    # Two seconds in which it refused, and finished 1,200: 600 a second, smoothed to 350.
    assert gate.refusal() is not None
    for _ in range(1_200):
        gate.went_live()
    now[0] = 4.0
    hints = [gate.retry_after() for _ in range(700)]
    assert gate.room == 1_000  # 1,050 within 3 s, at most 1,000
    # 700 turns at 350 a second after the one given before (at 5.01 s): the last is 3.01 s
    # away, hinted / 1.25.
    assert hints[-1] == 2
    assert hints[0] == 1
    # A process full of resumes that finishes none (its database gone): the room shrinks
    # to the floor, and the hints grow (a window that finished nothing counts once it has
    # lasted STALL_SECONDS).
    for _ in range(700):
        gate.stream_started()
    for second in range(3, 30):
        assert gate.refusal() is not None
        now[0] = 2.0 * second
        gate.retry_after()
    assert gate.room == limits.min_in_progress
    assert gate.retry_after() == limits.max_retry_seconds


def test_a_crowd_taken_at_once_does_not_lower_the_rate_before_it_goes_live() -> None:
    """Served breadth first, the crowd goes live at about one time: the seconds before that
    finish nothing, and must not halve the rate the refused are given their turns at."""
    now = [0.0]
    limits = LoadLimits(max_in_progress=1_000, min_in_progress=10, assumed_rate=100.0)
    gate = LoadGate(lambda: 0, limits, clock=lambda: now[0])
    for _ in range(300):
        gate.stream_started()
    assert gate.refusal() is not None  # full: this window measures
    now[0] = 2.5
    assert gate.retry_after() == 2  # 300 held at 100 a second (not 50): 3.01 s / 1.25
    assert gate.room == 300
    for _ in range(300):
        gate.stream_ended(live=True)
    now[0] = 3.0
    gate.retry_after()
    # 300 in 3 s: 100 a second, as assumed; had the empty window counted, 50 a second.
    assert gate.room == 300
    # A window that finished nothing counts once it has lasted STALL_SECONDS.
    for _ in range(300):
        gate.stream_started()
    assert gate.refusal() is not None
    now[0] = 3.0 + STALL_SECONDS - 0.1
    gate.retry_after()
    assert gate.room == 300
    now[0] = 3.0 + STALL_SECONDS
    gate.retry_after()
    assert gate.room == 150  # 100 smoothed with none: 50 a second


class _Waiter:
    """An upgrade waiting for its turn; says what became of it."""

    def __init__(self, name: str, held: list[int], log: list[str]) -> None:
        self.name = name
        self.gone = False
        self._held = held
        self._log = log

    def take_turn(self) -> None:
        self._held[0] += 1  # admitted: counted as under way, as the admission ticket does
        self._log.append(f"{self.name} in")

    def give_up(self, refusal: Refusal) -> None:
        self._log.append(f"{self.name} {refusal.reason}")


def test_upgrades_that_find_no_room_wait_for_their_turns_oldest_first() -> None:
    now = [0.0]
    held = [0]
    limits = LoadLimits(
        max_in_progress=4,
        min_in_progress=1,
        assumed_rate=2.0,
        max_queue_seconds=2.0,
        queue_deadline_seconds=5.0,
        max_waiting_per_address=2,
    )
    gate = LoadGate(lambda: held[0], limits, clock=lambda: now[0])
    log: list[str] = []
    held[0] = 4
    full = gate.refusal()
    assert full is not None
    assert full.reason == ROOM_REASON
    waiters = [_Waiter(f"w{i}", held, log) for i in range(5)]
    # At 2 a second within 2 s: 4 may wait, at most 2 from one address.
    assert gate.wait(waiters[0], "a")
    assert gate.wait(waiters[1], "a")
    assert not gate.wait(waiters[2], "a")
    assert gate.wait(waiters[2], "b")
    assert gate.wait(waiters[3], "c")
    assert not gate.wait(waiters[4], "d")  # a fifth would wait 2.5 s
    assert gate.waiting == 4
    # Clients refused meanwhile get their turns after the waiting ones.
    assert gate.retry_after() == 4  # 8 ahead at 2 a second: 4.5 s away; 4.5 / 1.25 = 3.6
    assert not gate.take_turns()
    assert log == []
    held[0] = 2  # two finished: two go on, the oldest first
    waiters[1].gone = True  # its client gave up meanwhile: nothing to do for it
    assert not gate.take_turns()
    assert log == ["w0 in", "w2 in"]
    assert held[0] == 4
    # While some wait, a newcomer finds no room even when there is some: it waits behind.
    held[0] = 3
    assert gate.refusal() is not None
    assert gate.wait(waiters[4], "a")  # "a" has room again: w0 and w1 left the queue
    # Taken in steps: one at a time here, the caller runs the loop between.
    held[0] = 0
    assert gate.take_turns(at_most=1)
    assert log[-1] == "w3 in"
    assert not gate.take_turns(at_most=1)
    assert log[-1] == "w4 in"
    assert gate.waiting == 0
    assert gate.refusal() is None  # room, and nobody waiting


def test_a_waiter_whose_turn_does_not_come_in_time_is_refused_with_a_hint() -> None:
    now = [0.0]
    held = [10]
    limits = LoadLimits(
        max_in_progress=10, min_in_progress=1, assumed_rate=100.0, queue_deadline_seconds=8.0
    )
    gate = LoadGate(lambda: held[0], limits, clock=lambda: now[0])
    log: list[str] = []
    first, second = _Waiter("first", held, log), _Waiter("second", held, log)
    assert gate.wait(first, "a")
    now[0] = 1.0
    assert gate.wait(second, "b")
    now[0] = 8.5  # the process stalled: the first waited past the deadline, not the second
    assert not gate.take_turns()
    assert log == [f"first {TURN_NOT_REACHED.reason}"]
    assert TURN_NOT_REACHED.status == 503
    now[0] = 9.0
    assert not gate.take_turns()
    assert log == [f"first {TURN_NOT_REACHED.reason}", f"second {TURN_NOT_REACHED.reason}"]
    assert gate.waiting == 0


def test_the_queue_has_a_bound_whatever_the_rate() -> None:
    held = [1]
    limits = LoadLimits(max_in_progress=1, assumed_rate=1_000_000.0, max_waiting=3)
    gate = LoadGate(lambda: held[0], limits)
    waiters = [_Waiter(f"w{i}", held, []) for i in range(4)]
    assert [gate.wait(w, f"address {i}") for i, w in enumerate(waiters)] == [
        True,
        True,
        True,
        False,
    ]


def test_without_a_queue_a_full_process_refuses_at_once() -> None:
    held = [1]
    gate = LoadGate(lambda: held[0], LoadLimits(max_in_progress=1, max_queue_seconds=0.0))
    assert gate.refusal() is not None
    assert not gate.wait(_Waiter("w", held, []), "a")
    assert gate.waiting == 0


def test_a_waiter_that_fails_does_not_stop_the_queue() -> None:
    held = [1]
    gate = LoadGate(lambda: held[0], LoadLimits(max_in_progress=2, min_in_progress=1))
    log: list[str] = []

    class _Failing(_Waiter):
        def take_turn(self) -> None:
            raise RuntimeError("the connection broke as it went on")

    assert gate.wait(_Failing("broken", held, log), "a")
    assert gate.wait(_Waiter("next", held, log), "b")
    held[0] = 0
    assert not gate.take_turns()
    assert log == ["next in"]
    assert gate.waiting == 0
