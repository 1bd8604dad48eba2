"""Rate limits for log lines that clients can cause, so that no client can fill the disk.

Each event name has a token bucket (``rate`` lines per second, bursts of ``burst``). A line
over the rate is not written but counted; the next line of that event that is written
carries ``suppressed``: how many were left out since, and ``on_suppressed`` hears each one
(the metrics count them). Pure: the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0


@dataclass
class LogLimiter:
    """``rate`` and ``burst`` hold for every event but those ``per_event`` names."""

    rate: float = 5.0
    burst: float = 20.0
    on_suppressed: Callable[[str], None] | None = None
    per_event: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    max_events: int = 1_000  # event names are ours, never a client's: this is a safety net
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, event: str, now: float) -> int | None:
        """None: leave this line out. Otherwise write it, noting the returned count of lines
        of this event left out before it."""
        rate, burst = self.per_event.get(event, (self.rate, self.burst))
        bucket = self._buckets.get(event)
        if bucket is None:
            if len(self._buckets) >= self.max_events:
                self._buckets.clear()
            bucket = self._buckets[event] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1:
            bucket.suppressed += 1
            if self.on_suppressed is not None:
                self.on_suppressed(event)
            return None
        bucket.tokens -= 1
        left_out, bucket.suppressed = bucket.suppressed, 0
        return left_out
