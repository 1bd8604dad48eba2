"""The read replica's pure decisions: replay lag from WAL positions, usability, and where
one catch-up read comes from."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fieldsync.store.replica_plan import (
    Refusal,
    ReplayLag,
    catch_up_source,
    replica_state,
)


def test_an_idle_primary_shows_no_lag_however_long_ago_the_last_write() -> None:
    lag = ReplayLag()
    assert lag.observe(0.0, 100, 100) == 0.0
    assert lag.observe(3600.0, 100, 100) == 0.0


def test_a_stopped_replay_lags_from_the_last_position_it_reached() -> None:
    lag = ReplayLag()
    assert lag.observe(10.0, 100, 100) == 0.0
    assert lag.observe(11.0, 200, 100) == 1.0  # fresh as of t=10
    assert lag.observe(15.0, 300, 100) == 5.0
    assert lag.observe(16.0, 300, 250) == 5.0  # past t=11's 200, not t=15's 300
    assert lag.observe(17.0, 300, 300) == 0.0


def test_a_replica_behind_before_any_position_is_known_lags_without_bound() -> None:
    assert math.isinf(ReplayLag().observe(0.0, 200, 100))


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 50), st.floats(0.0, 10.0)),
        min_size=1,
        max_size=40,
    )
)
def test_the_lag_is_the_time_since_the_latest_noted_position_replayed(
    steps: list[tuple[int, int, float]],
) -> None:
    """Against every position ever noted: the pruned history answers the same."""
    lag = ReplayLag(max_samples=1_000)
    noted: list[tuple[float, int]] = []
    now, primary, replayed = 0.0, 0, 0
    for grow, catch_up, wait in steps:
        now += wait
        primary += grow
        replayed = min(primary, replayed + catch_up)  # replay only moves forward
        noted.append((now, primary))
        if replayed >= primary:
            expected = 0.0
        else:
            times = [t for t, position in noted if position <= replayed]
            expected = now - max(times) if times else math.inf
        assert lag.observe(now, primary, replayed) == expected


def test_a_replica_is_used_only_in_recovery_of_the_same_cluster_within_the_lag() -> None:
    usable = replica_state(in_recovery=True, same_cluster=True, lag_seconds=1.0, max_lag=5.0)
    assert usable.usable
    assert usable.refusal is None
    lagging = replica_state(in_recovery=True, same_cluster=True, lag_seconds=6.0, max_lag=5.0)
    assert lagging.refusal is Refusal.LAGGING
    assert "6.0 s" in lagging.detail
    unknown = replica_state(in_recovery=True, same_cluster=True, lag_seconds=math.inf, max_lag=5)
    assert "unknown yet" in unknown.detail
    promoted = replica_state(in_recovery=False, same_cluster=True, lag_seconds=0, max_lag=5)
    assert promoted.refusal is Refusal.NOT_A_REPLICA
    other = replica_state(in_recovery=True, same_cluster=False, lag_seconds=0, max_lag=5)
    assert other.refusal is Refusal.NOT_A_REPLICA


@given(st.integers(0, 100), st.one_of(st.none(), st.integers(0, 100)))
def test_a_catch_up_never_moves_a_client_back_nor_past_the_replicas_head(
    cursor: int, replica_head: int | None
) -> None:
    source = catch_up_source(cursor, replica_head)
    if source == "replica":
        # Only when the replica holds changes past the cursor: it answers seqs in
        # (cursor, replica_head], all of which it has replayed.
        assert replica_head is not None
        assert cursor < replica_head
    elif source == "tail":
        assert cursor == replica_head
    elif replica_head is None:
        assert source is Refusal.UNKNOWN_PROJECT
    else:
        assert source is Refusal.BEHIND_CURSOR
        assert cursor > replica_head
