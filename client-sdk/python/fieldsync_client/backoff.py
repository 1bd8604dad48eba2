"""Reconnect delays: exponential backoff with full jitter.

The n-th consecutive failure waits a uniformly random time in ``[0, min(cap, base * 2**n))``,
so clients cut off together do not all come back at the same instant. A server that says
when to come back (``Retry-After``) is obeyed: the wait is then at least that hint, spread
over up to half as long again, so a refused crowd does not return in one wave either.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def ceiling(self) -> float:
        """The longest the next delay can be."""
        growth: float = 2.0 ** min(self.attempt, 62)
        return min(self.cap, self.base * growth)

    def next_delay(self, at_least: float = 0.0) -> float:
        """The wait before the next attempt; ``at_least`` is the server's retry hint."""
        delay = float(self._rng()) * self.ceiling()
        self.attempt += 1
        if at_least > 0:
            delay = max(delay, at_least * (1 + 0.5 * float(self._rng())))
        return delay

    def reset(self) -> None:
        self.attempt = 0
