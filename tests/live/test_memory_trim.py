"""When the server gives freed memory back: every interval, and soon after many closes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fieldsync.live.memory import TrimPolicy


def test_trims_every_interval_and_after_a_wave_of_closes() -> None:
    policy = TrimPolicy(interval=60, after_closed=100)
    assert not policy.due(0, 500)  # the first call starts the period
    assert not policy.due(1, 1000)
    assert not policy.due(2, 901)  # 99 closed since the peak
    assert policy.due(3, 900)  # 100 closed: now
    assert not policy.due(4, 850)  # a new period, from 900
    assert policy.due(63, 850)  # the interval passed


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 10_000)), max_size=60))
def test_never_twice_within_the_interval_unless_enough_closed_since(
    steps: list[tuple[float, int]],
) -> None:
    policy = TrimPolicy(interval=30, after_closed=200)
    now = 0.0
    last: float | None = None
    peak = 0
    for gap, open_now in steps:
        now += gap
        peak = max(peak, open_now)
        if policy.due(now, open_now):
            assert last is not None
            assert now - last >= 30 or peak - open_now >= 200
            peak = open_now
            last = now
        elif last is None:
            last, peak = now, open_now
