"""When reads may go to a streaming replica, and from which side one catch-up read comes.

Pure decisions for ``store.replica`` (which does the I/O), kept apart so they are tested
without a database:

- :class:`ReplayLag`: how far behind the primary the replica's data is, in seconds, from
  WAL positions alone. Each check notes the primary's WAL position with the time, then
  reads how far the replica has replayed; the replica is then at least as fresh as the
  primary was at the latest noted time whose position it has replayed. No clock of the
  replica is trusted and an idle primary shows no lag (unlike
  ``now() - pg_last_xact_replay_timestamp()``, which grows while nothing is written).
- :func:`replica_state`: whether the replica may serve reads now, and why not.
- :func:`catch_up_source`: for one catch-up read, whether the replica's copy of the project
  can answer it without moving the client backwards or making it skip data.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Literal

MAX_SAMPLES = 4_096  # noted primary positions kept (checks every 0.5 s: over half an hour)


class Refusal(Enum):
    """Why a read that could have gone to the replica went to the primary (metric labels)."""

    UNCHECKED = "unchecked"  # no check has finished yet
    DOWN = "down"  # unreachable, refused, or it did not answer in time
    LAGGING = "lagging"  # replay further behind than the bound
    NOT_A_REPLICA = "not_a_replica"  # not in recovery, or a copy of another cluster
    BEHIND_CURSOR = "behind_cursor"  # the client's cursor is past what it replayed
    UNKNOWN_PROJECT = "unknown_project"  # the project is not replayed yet
    FAILED = "failed"  # the read failed there (e.g. cancelled by a recovery conflict)


class ReplayLag:
    """Seconds by which the replica's data trails the primary's, from WAL positions."""

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=max_samples)

    def observe(self, now: float, primary_lsn: int, replayed_lsn: int) -> float:
        """Note the primary at ``primary_lsn`` at ``now`` (read before the replica's
        ``replayed_lsn``); the lag: 0 when it replayed everything, else the time since the
        latest noted position it has replayed (infinite when none is known yet)."""
        self._samples.append((now, primary_lsn))
        if replayed_lsn >= primary_lsn:
            self._samples.clear()
            self._samples.append((now, primary_lsn))
            return 0.0
        replayed: tuple[float, int] | None = None
        while self._samples and self._samples[0][1] <= replayed_lsn:
            replayed = self._samples.popleft()
        if replayed is None:
            return math.inf
        # The latest one it replayed stays: the next check may still need it.
        self._samples.appendleft(replayed)
        return max(0.0, now - replayed[0])

    def forget(self) -> None:
        """The replica was replaced or restarted: its old positions say nothing now."""
        self._samples.clear()


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the last check found: may reads go there, and if not, why."""

    usable: bool
    refusal: Refusal | None  # None when usable
    detail: str  # for health and logs
    lag_seconds: float | None  # None when not measured (down, not a replica)


UNCHECKED = ReplicaState(False, Refusal.UNCHECKED, "not checked yet", None)


def down(detail: str) -> ReplicaState:
    return ReplicaState(False, Refusal.DOWN, f"unreachable: {detail}", None)


def replica_state(
    *, in_recovery: bool, same_cluster: bool, lag_seconds: float, max_lag: float
) -> ReplicaState:
    """The state of a replica that answered its check."""
    if not in_recovery:
        return ReplicaState(
            False, Refusal.NOT_A_REPLICA, "not in recovery (promoted, or not a standby)", None
        )
    if not same_cluster:
        return ReplicaState(
            False, Refusal.NOT_A_REPLICA, "a copy of another cluster than the primary", None
        )
    if lag_seconds > max_lag:
        shown = "unknown yet" if math.isinf(lag_seconds) else f"{lag_seconds:.1f} s"
        return ReplicaState(
            False,
            Refusal.LAGGING,
            f"replay lag {shown}, over the bound of {max_lag:g} s",
            lag_seconds,
        )
    return ReplicaState(True, None, f"replay lag {lag_seconds:.1f} s", lag_seconds)


def catch_up_source(cursor: int, replica_head: int | None) -> Refusal | Literal["replica", "tail"]:
    """Where a catch-up read from ``cursor`` comes from, given the project's head as the
    replica has replayed it (None: the project is not there yet).

    ``"replica"``: from the replica, which holds changes past the cursor (it never hands out
    a seq it has not replayed, and what it holds up to its head is exactly the primary's
    log, seqs being gapless and committed in order). ``"tail"``: from the primary, as the
    normal end of a catch-up: the replica holds nothing past the cursor, and whatever the primary
    committed since must be read there before the client goes live. A Refusal: from the
    primary, because the replica cannot answer without moving the client backwards.
    """
    if replica_head is None:
        return Refusal.UNKNOWN_PROJECT
    if cursor > replica_head:
        return Refusal.BEHIND_CURSOR
    if cursor == replica_head:
        return "tail"
    return "replica"
