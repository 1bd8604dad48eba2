"""Per-user message rate limits: a token bucket shared by all of a user's connections.

Pure: the caller passes the clock reading, so the rules are tested without sleeping. One
bucket per user (not per connection) so that opening more connections buys no more rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` messages per second sustained, bursts of up to ``burst``.

    A connection whose messages are refused ``max_strikes`` times in a row (no accepted
    message between) is closed: it is not slowing down, and its user owes a burst.
    """

    rate: float = 200.0
    burst: int = 400
    max_strikes: int = 100

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.max_strikes < 1:
            raise ValueError("rate, burst and max_strikes must be positive")


DEFAULT_RATE_LIMIT = RateLimit()


class TokenBucket:
    def __init__(self, limit: RateLimit, now: float) -> None:
        self._limit = limit
        self._tokens = float(limit.burst)
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self._limit.burst), self._tokens + elapsed * self._limit.rate)
        self._updated = max(self._updated, now)

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the message is over the limit."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def owe_a_burst(self, now: float) -> None:
        """The user's connection was closed for flooding: nothing is admitted until a whole
        burst has come back (``burst / rate`` seconds), so reconnecting at once buys nothing
        and is refused at the hello. The debt is at most one burst however often it comes."""
        self._refill(now)
        self._tokens = -float(self._limit.burst)

    def full(self, now: float) -> bool:
        """Back to a full burst: nothing is owed, so the bucket can be forgotten."""
        self._refill(now)
        return self._tokens >= self._limit.burst
