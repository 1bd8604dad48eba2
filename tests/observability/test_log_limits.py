"""The log rate limit: bursts, refill, counting what was left out, per-event rates."""

from __future__ import annotations

from fieldsync.observability.log_limits import LogLimiter


def test_a_burst_passes_then_lines_are_left_out_and_counted() -> None:
    heard: list[str] = []
    limiter = LogLimiter(rate=2.0, burst=3.0, on_suppressed=heard.append)
    assert [limiter.allow("refused", 0.0) for _ in range(3)] == [0, 0, 0]
    assert [limiter.allow("refused", 0.0) for _ in range(4)] == [None] * 4
    assert heard == ["refused"] * 4
    # Half a second at 2 a second buys one line, which carries the count left out.
    assert limiter.allow("refused", 0.5) == 4
    assert limiter.allow("refused", 0.5) is None
    assert limiter.allow("refused", 0.5 + 10) == 1


def test_events_have_buckets_of_their_own_and_may_have_their_own_rate() -> None:
    limiter = LogLimiter(rate=1.0, burst=1.0, per_event={"opened": (100.0, 50.0)})
    assert limiter.allow("refused", 0.0) == 0
    assert limiter.allow("refused", 0.0) is None
    assert all(limiter.allow("opened", 0.0) == 0 for _ in range(50))
    assert limiter.allow("opened", 0.0) is None
    assert limiter.allow("opened", 0.01) == 1


def test_the_number_of_buckets_is_bounded() -> None:
    limiter = LogLimiter(rate=1.0, burst=1.0, max_events=10)
    for n in range(100):
        limiter.allow(f"event-{n}", 0.0)
    assert len(limiter._buckets) <= 10
