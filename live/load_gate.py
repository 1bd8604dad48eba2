"""Refusing new sync connections early, with a retry hint, when the process is saturated.

In a reconnect storm every connection admitted costs the event loop a handshake, a token
check and a catch-up; admitted faster than the loop can finish them, they all slow down
together until clients time out, and ``/healthz`` and ``/metrics`` stop answering with them.
So before an upgrade is accepted the gate looks at two things: how many connections are
between their upgrade and live (unauthenticated, or a project still catching up), and how
late the event loop runs (``watch_lag``). Over either bound (the lag's only while resumes
are under way) the upgrade is answered at once with 503 and a ``Retry-After`` hint that the
SDKs honour with their jitter.

How many may be under way is what the process finishes in ``max_wait_seconds`` at its rate
(within ``[min_in_progress, max_in_progress]``): a refusal costs the process about as much
as a resume (the accept, the upgrade's parse, the answer, and the client's next attempt),
so it takes as many as it can finish well within the clients' and its own handshake
timeouts (10 s), and refuses only the rest. The loop serves the admitted breadth first, so
they all finish at about the time the last one does.

The hint gives each refused client a turn: after what the process already holds and after
the clients refused before it, at its rate, within
``[min_retry_seconds, max_retry_seconds]``. Both SDKs wait the hint plus up to half again
(``SDK_JITTER``), a quarter more on average: the hint is the wait for the turn divided by
that, so clients arrive around their turns rather than up to half as late again, and the
process has work all along. So a refused crowd returns spread over the time it needs, and
no longer.

An upgrade that finds the process full is not refused at once when its turn is near: it
waits, its request read and its answer not yet sent, in a queue the process takes from,
oldest first, as room frees (``take_turns``), if its turn is expected within
``max_queue_seconds``. A refusal is not free: a 10,000-client storm refused 6,900 at about
0.15 ms of server CPU each, and each refused client came back on a new connection after its
hint and jitter; with the queue the same storm went live a third sooner at a quarter less
CPU per resume. Only the crowd the queue cannot serve in time is refused, and a waiter whose
turn has not come within ``queue_deadline_seconds`` (the rate fell meanwhile) is answered
503 with a hint then, well within the clients' 10 s to open a connection. Waiters are capped
per client address, so one address cannot fill the queue and push everyone else into
refusals.

The rate is measured over the seconds in which the process was full (it refused some, or
kept some waiting, for the resumes it held: a second with room says only that it finished
what came), smoothed from ``assumed_rate``; seconds that finished nothing count only once
they add up to ``STALL_SECONDS``, since a crowd served breadth first goes live all at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fieldsync.live.admission import Refusal

log = logging.getLogger(__name__)

LAG_CHECK_SECONDS = 0.05
# Resumes finish in bursts (breadth first, a whole batch at once): the rate is taken over
# this window, and smoothed.
RATE_WINDOW_SECONDS = 2.0
# A window in which a full process finished nothing is measured only after this long
# (twice ``LoadLimits.max_wait_seconds``): by then it is stuck (its database gone, say).
STALL_SECONDS = 6.0
# A client told to wait h seconds waits h * (1 + SDK_JITTER * u), u uniform in [0, 1): the
# SDKs' backoff (fieldsync_client/backoff.py, client-sdk/typescript/src/backoff.ts).
SDK_JITTER = 0.5
# Waiting upgrades let go on at once, before the loop gets to its other callbacks.
TURNS_AT_ONCE = 200

ROOM_REASON = "resumes_in_progress"
TURN_NOT_REACHED = Refusal(
    "turn_not_reached",
    503,
    "the server could not take this connection in time; retry after the hinted delay",
)


@dataclass(frozen=True, slots=True)
class LoadLimits:
    # Connections between their upgrade and live: as many as the process finishes in
    # ``max_wait_seconds`` at its rate, within these bounds. A process that takes none
    # would measure nothing: ``min_in_progress`` are always taken (however late the loop).
    max_wait_seconds: float = 3.0
    min_in_progress: int = 100
    max_in_progress: int = 3_000
    # How late the event loop may run. A burst of connections makes it late by itself
    # (accepting them, reading their requests): only a loop far behind refuses everyone,
    # and only while it has ``min_in_progress`` resumes of its own under way. A loop late
    # from refusing a crowd (on a starved machine, say) still takes a few, or it would
    # spend itself on refusals and finish nothing.
    max_lag_seconds: float = 2.0
    # Resumes a second the process is assumed to finish before it has measured its own
    # rate (for the first crowd after a start): a little under the figure measured on a
    # development machine (2 cores; 2,000 clients resumed at once, none refused, all live
    # in 1.2-1.3 s). Assumed lower, it sends the refused away for longer than it needs:
    # 10,000 clients at once went live in 13 s at 1,000 a second, in 10 s at 1,500.
    assumed_rate: float = 1500.0
    min_retry_seconds: int = 1
    max_retry_seconds: int = 30
    # An upgrade that finds no room waits for its turn when that is expected within this
    # long (the queue ahead of it at the measured rate), else it is refused with a hint.
    # 0 refuses at once, as before the queue.
    max_queue_seconds: float = 5.0
    # A waiter whose turn has not come after this long is refused with a hint: answered
    # within the SDKs' 10 s to open a connection, never left to time out.
    queue_deadline_seconds: float = 8.0
    # Upgrades from one client address waiting at once (the admission's cap on its
    # unauthenticated connections is the same), and from all: beyond either, refused. Each
    # holds a socket and its parsed request, a few KB.
    max_waiting_per_address: int = 64
    max_waiting: int = 10_000


DEFAULT_LOAD_LIMITS = LoadLimits()


class Waiter(Protocol):
    """An upgrade waiting for its turn (``live.wire.SyncWire``)."""

    @property
    def gone(self) -> bool:
        """The connection ended while it waited: nothing to do for it."""
        ...

    def take_turn(self) -> None:
        """Room now: carry on with the upgrade."""
        ...

    def give_up(self, refusal: Refusal) -> None:
        """Its turn did not come in time: refuse it with the hint."""
        ...


class LoadGate:
    """This process's load as the upgrade sees it: the connections under way are the
    sockets that have not said hello yet (``unauthenticated``, from ``live.admission``),
    the sessions starting their streams, and the streams catching up."""

    def __init__(
        self,
        unauthenticated: Callable[[], int],
        limits: LoadLimits = DEFAULT_LOAD_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._unauthenticated = unauthenticated
        self._clock = clock
        self.starting = 0  # sessions past their hello whose streams have not started yet
        self.catching_up = 0  # project streams between subscribe and live
        self.lag = 0.0  # seconds the event loop ran late at its last check
        self._finished = 0  # streams that went live since the rate was last taken
        self._rate = limits.assumed_rate  # streams going live per second when full, smoothed
        # Whether the process refused anyone for resumes in progress since the rate was
        # taken: only such a second measures what it can do.
        self._saturated = False
        self._rate_at = clock()
        self._next_turn = 0.0  # the clock time of the last turn handed to a refused client
        # Upgrades waiting for room, oldest first: (since when, client address, waiter).
        self._queue: deque[tuple[float, str, Waiter]] = deque()
        self._waiting_from: Counter[str] = Counter()

    @property
    def waiting(self) -> int:
        """Upgrades waiting for their turn (some may have ended meanwhile)."""
        return len(self._queue)

    @property
    def in_progress(self) -> int:
        return self._unauthenticated() + self.starting + self.catching_up

    @property
    def room(self) -> int:
        """How many connections may be between upgrade and live now."""
        limits = self.limits
        wanted = int(self._rate * limits.max_wait_seconds)
        return min(limits.max_in_progress, max(limits.min_in_progress, wanted))

    def stream_started(self) -> None:
        self.catching_up += 1

    def stream_ended(self, live: bool) -> None:
        self.catching_up -= 1
        if live:
            self._finished += 1

    def went_live(self) -> None:
        """A stream went live at once (its cursor at the feed's head): never in progress,
        but a resume finished all the same."""
        self._finished += 1

    def refusal(self) -> Refusal | None:
        """Why one more connection should not be taken now, or None."""
        in_progress = self.in_progress
        lagging = self.lag > self.limits.max_lag_seconds
        if lagging and in_progress >= min(self.limits.min_in_progress, self.room):
            return Refusal(
                "event_loop_lag", 503, "the server is saturated; retry after the hinted delay"
            )
        # With upgrades waiting, a new one takes its place behind them.
        if in_progress >= self.room or self._queue:
            self._saturated = True
            return Refusal(
                ROOM_REASON,
                503,
                "the server is busy resuming other clients; retry after the hinted delay",
            )
        return None

    def wait(self, waiter: Waiter, address: str) -> bool:
        """Keep an upgrade refused for want of room waiting for its turn, if that is expected
        within ``max_queue_seconds`` and its address has room in the queue; False: refuse
        it. It goes on in ``take_turns``."""
        limits = self.limits
        if self._waiting_from[address] >= limits.max_waiting_per_address:
            return False
        if len(self._queue) >= limits.max_waiting:
            return False
        if (len(self._queue) + 1) / max(self._rate, 1.0) > limits.max_queue_seconds:
            return False
        self._saturated = True
        self._queue.append((self._clock(), address, waiter))
        self._waiting_from[address] += 1
        return True

    def take_turns(self, at_most: int = TURNS_AT_ONCE) -> bool:
        """Let waiting upgrades go on, oldest first, while the process has room, and refuse
        those that waited past ``queue_deadline_seconds``; at most ``at_most`` of them.
        True when more may go now: call again once the loop has run its other callbacks."""
        queue = self._queue
        expired = self._clock() - self.limits.queue_deadline_seconds
        handled = 0
        while queue and handled < at_most:
            since, address, waiter = queue[0]
            gone = waiter.gone
            late = since <= expired
            if not gone and not late and self.in_progress >= self.room:
                return False
            queue.popleft()
            self._waiting_from[address] -= 1
            if not self._waiting_from[address]:
                del self._waiting_from[address]
            if gone:
                continue
            handled += 1
            try:
                if late:
                    waiter.give_up(TURN_NOT_REACHED)
                else:
                    waiter.take_turn()  # counted in ``in_progress`` from now on
            except Exception:
                # One connection's failure (logged) must not stop the queue: the gate's
                # task would end with it, and every waiter after it would wait for nothing.
                log.exception("a waiting upgrade failed", extra={"event": "waiting_failed"})
        return bool(queue) and handled >= at_most

    def retry_after(self) -> int:
        """The ``Retry-After`` that brings this client back around its turn. Refused
        clients are given turns one after another, at the rate the process finishes
        resumes, after what it already holds: a refused crowd comes back spread out, not in
        one wave, and as fast as the process takes it."""
        self._take_rate()
        limits = self.limits
        rate = max(self._rate, 1.0)
        now = self._clock()
        held = self.in_progress + len(self._queue)
        self._next_turn = max(self._next_turn, now + held / rate) + 1 / rate
        # Not plus the loop's lag: a crowd arriving makes the loop late by itself, and the
        # turns already count what the process holds.
        wait = (self._next_turn - now) / (1 + SDK_JITTER / 2)
        return min(limits.max_retry_seconds, max(limits.min_retry_seconds, round(wait)))

    def _take_rate(self) -> None:
        now = self._clock()
        elapsed = now - self._rate_at
        if elapsed < RATE_WINDOW_SECONDS:
            return
        full = self._saturated or bool(self._queue)
        if full and self._finished == 0 and elapsed < STALL_SECONDS:
            # The loop serves what it holds breadth first, so a crowd taken at once goes
            # live at about one time, up to ``max_wait_seconds`` after it came: a window
            # before that finishes nothing, which is no sign of a slow process. Measured
            # so, the first crowd after a start halved the rate the refused were given
            # their turns at, and they came back to an idle process. The window runs on
            # until something finishes, or so long that the process is stuck.
            return
        current = self._finished / elapsed
        # What a process full of resumes finished is what it can do; one that had room
        # finished what came, which says nothing of how much more it could do.
        if full:
            self._rate = 0.5 * self._rate + 0.5 * current
        self._finished = 0
        self._saturated = False
        self._rate_at = now

    async def watch_lag(self, interval: float = LAG_CHECK_SECONDS) -> None:
        """Measure how late the event loop wakes a sleeper, and let waiting upgrades take
        their turns, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            self.lag = max(0.0, loop.time() - before - interval)
            self._take_rate()
            self._take_turns_in_steps()

    def _take_turns_in_steps(self) -> None:
        """``take_turns`` until no more may go, ``TURNS_AT_ONCE`` per step, the loop running
        its other callbacks between steps."""
        if self.take_turns():
            asyncio.get_running_loop().call_soon(self._take_turns_in_steps)
