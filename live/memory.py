"""Giving freed heap memory back to the system, so a quiet server's footprint falls again.

Connection churn allocates and frees many small blocks; glibc keeps freed pages in its
arenas, so a process's resident memory creeps up under churn and stays there when the
churn stops, although the Python heap itself does not grow (``bench/churn_heap.py``:
traced memory flat, resident memory back to its plateau after ``malloc_trim``). A
background task calls ``malloc_trim(0)`` now and then. Where the C library has no
``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_SECONDS = 60.0


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


async def trim_periodically(interval: float = TRIM_SECONDS) -> None:
    trim = heap_trimmer()
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval)
        trim()
