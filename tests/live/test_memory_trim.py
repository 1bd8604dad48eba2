"""When the server gives freed memory back: every interval, and soon after many closes."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_a_settled_collector_freezes_what_startup_made_and_still_collects_cycles() -> None:
    """In a process of its own: the thresholds and frozen objects are the process's."""
    script = """
import gc, json, weakref
from fieldsync.live.memory import GC_YOUNG_ALLOCATIONS, settle_collector

class Node:
    pass

settle_collector()
frozen = gc.get_freeze_count()
node = Node()
node.self = node  # a cycle made after startup: still the collector's to find
gone = weakref.ref(node)
del node
gc.collect()
print(json.dumps([gc.get_threshold()[0], GC_YOUNG_ALLOCATIONS, frozen, gone() is None]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    young, expected, frozen, collected = json.loads(done.stdout.splitlines()[-1])
    assert young == expected == 50_000
    assert frozen > 10_000  # the modules imported: all out of the full passes' way
    assert collected is True
