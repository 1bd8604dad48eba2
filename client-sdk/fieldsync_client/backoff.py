"""Reconnect delays: exponential backoff with full jitter.

The n-th consecutive failure waits a uniformly random time in ``[0, min(cap, base * 2**n))``,
so clients cut off together do not all come back at the same instant.
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

    def next_delay(self) -> float:
        delay = float(self._rng()) * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
