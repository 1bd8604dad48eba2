"""Admitting WebSocket connections before they have said who they are.

A socket that has not completed ``hello`` costs memory and a task but has proven nothing, so
the number of such sockets is capped per process and per client address (the address the
load balancer passes in ``X-Forwarded-For``, which uvicorn puts in the scope for trusted
proxies). Pure bookkeeping: the shell asks before accepting the upgrade, and tells the
ticket when the connection authenticated or ended.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    # As many as the load gate may let be under way at most (``LoadLimits.max_in_progress``):
    # in a reconnect storm every one of them is a client about to say hello.
    max_unauthenticated: int = 3_000
    max_unauthenticated_per_address: int = 64
    retry_after_seconds: int = 5  # what a refused client is told to wait (Retry-After)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is not admitted: ``reason`` for metrics and logs, HTTP status."""

    reason: str
    status: int
    message: str


class Ticket:
    """One admitted connection's place among the unauthenticated ones, until released."""

    def __init__(self, admission: Admission, address: str) -> None:
        self._admission = admission
        self.address = address
        self._held = True

    def release(self) -> None:
        """The connection authenticated, or ended: it no longer counts. Idempotent."""
        if self._held:
            self._held = False
            self._admission._release(self.address)


DEFAULT_ADMISSION_LIMITS = AdmissionLimits()


class Admission:
    def __init__(self, limits: AdmissionLimits = DEFAULT_ADMISSION_LIMITS) -> None:
        self.limits = limits
        self._per_address: Counter[str] = Counter()
        self._total = 0

    @property
    def unauthenticated(self) -> int:
        return self._total

    def admit(self, address: str) -> Ticket | Refusal:
        if self._total >= self.limits.max_unauthenticated:
            return Refusal(
                "unauthenticated_process",
                503,
                "too many connections are waiting to authenticate; retry shortly",
            )
        if self._per_address[address] >= self.limits.max_unauthenticated_per_address:
            return Refusal(
                "unauthenticated_address",
                429,
                "too many connections from this address are waiting to authenticate",
            )
        self._per_address[address] += 1
        self._total += 1
        return Ticket(self, address)

    def _release(self, address: str) -> None:
        self._total -= 1
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]
