"""Giving freed heap memory back to the system, so a quiet server's footprint falls again.

Connection churn allocates and frees many small blocks; glibc keeps freed pages in its
arenas, so a process's resident memory creeps up under churn and stays there when the
churn stops, although the Python heap itself does not grow (``bench/churn_heap.py``:
traced memory flat, resident memory back to its plateau after ``malloc_trim``). A
background task calls ``malloc_trim(0)`` every minute, and within a second of many
connections closing (``TrimPolicy``), so a wave of disconnects gives back what the C
allocator can. Where the C library has no ``malloc_trim`` (musl, macOS) it does nothing.

What it cannot give back: Python's own small-object allocator keeps a 1 MiB arena as long
as one object in it lives, and a few long-lived objects (cache entries, pooled database
statements) made while sockets opened are spread among theirs (``docs/scaling.md``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from dataclasses import dataclass

TRIM_SECONDS = 60.0
CHECK_SECONDS = 1.0
TRIM_AFTER_CLOSED = 256
"""Connections closed since the last trim (net of those opened) that call for one now."""


@dataclass(slots=True)
class TrimPolicy:
    """When to trim: every ``interval`` seconds, and as soon as the number of open
    connections has fallen by ``after_closed`` from its highest point since the last trim."""

    interval: float = TRIM_SECONDS
    after_closed: int = TRIM_AFTER_CLOSED
    _last: float | None = None
    _peak: int = 0

    def due(self, now: float, open_connections: int) -> bool:
        """Whether to trim now (``now``: a monotonic clock); a True starts a new period."""
        if self._last is None:
            self._last, self._peak = now, open_connections
            return False
        self._peak = max(self._peak, open_connections)
        if now - self._last < self.interval and self._peak - open_connections < self.after_closed:
            return False
        self._last, self._peak = now, open_connections
        return True


def heap_trimmer() -> Callable[[], None] | None:
    """``malloc_trim(0)`` of this process's C library, or None where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def trim_periodically(
    open_connections: Callable[[], int],
    policy: TrimPolicy | None = None,
    check_seconds: float = CHECK_SECONDS,
) -> None:
    trim = heap_trimmer()
    if trim is None:
        return
    policy = policy or TrimPolicy()
    loop = asyncio.get_running_loop()
    while True:
        if policy.due(loop.time(), open_connections()):
            trim()
        await asyncio.sleep(check_seconds)


# The cyclic collector's thresholds in a serving process (CPython's: 700, 10, 10). The young
# generation is collected every GC_YOUNG_ALLOCATIONS container allocations instead of 700.
GC_YOUNG_ALLOCATIONS = 50_000


def settle_collector(young: int = GC_YOUNG_ALLOCATIONS) -> None:
    """Keep the cyclic collector from stalling a serving process.

    A resume storm holds thousands of new connections, each a few dozen objects, and the
    collector's full passes walk every object the process holds: 13 to 15 of them, up to
    240-330 ms each and 1.5-2.2 s in all, in a storm of 10,000 that took 8.6 s of CPU
    (``docs/scaling.md``). What the process
    made while starting (modules, the app, the pool) lives as long as it does, so it is
    moved out of the collector's sight (``gc.freeze``); and the young generation is
    collected less often, since a connection no longer leaves cycles behind when it ends
    (``live.lost_transports``) and the passes mostly find nothing. Called once the server
    listens."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
