"""The token bucket on its own: rate, burst, and the clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldsync.live.rate_limit import RateLimit, TokenBucket


def test_a_burst_then_the_sustained_rate() -> None:
    bucket = TokenBucket(RateLimit(rate=10, burst=5), now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert not bucket.full(0.1)
    assert bucket.full(10.0)


def test_a_clock_going_backwards_gives_nothing() -> None:
    bucket = TokenBucket(RateLimit(rate=10, burst=1), now=5.0)
    assert bucket.take(5.0)
    assert not bucket.take(1.0)
    assert not bucket.take(5.05)
    assert bucket.take(5.2)


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"burst": 0}, {"max_strikes": 0}])
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimit(**kwargs)  # type: ignore[arg-type]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.floats(1, 1000),
    burst=st.integers(1, 100),
    steps=st.lists(st.floats(0, 2), max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(RateLimit(rate=rate, burst=burst), now=0.0)
    now = 0.0
    taken = 0
    for step in steps:
        now += step
        taken += bucket.take(now)
        assert taken <= burst + rate * now + 1e-6


def test_a_connection_closed_for_flooding_leaves_its_user_owing_a_burst() -> None:
    bucket = TokenBucket(RateLimit(rate=5, burst=10), now=0.0)
    while bucket.take(0.0):
        pass
    bucket.owe_a_burst(0.0)
    bucket.owe_a_burst(0.1)  # owed again at once: still one burst, from the later time
    # A token would be back after 0.2 s without the debt; with it, after 2 s and 0.2 more.
    assert not bucket.take(0.5)
    assert not bucket.take(2.2)
    assert bucket.take(2.31)
    assert not bucket.full(2.31)
    assert bucket.full(100.0)
