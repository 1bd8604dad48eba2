"""Deadlines on one timer (``live.ws_deadlines``): none fires early, none more than a tick
late, a cancelled one never, and one set from another's expiry fires in its turn."""

from __future__ import annotations

import asyncio

from fieldsync.live.ws_deadlines import Deadlines

TICK = 0.02


class Item:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, log: list[tuple[str, float]]):
        self.loop, self.name, self.log = loop, name, log

    def expired(self) -> None:
        self.log.append((self.name, self.loop.time()))


async def test_deadlines_fire_in_order_within_a_tick_and_cancelled_ones_never() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    log: list[tuple[str, float]] = []
    start = loop.time()
    waits = {"c": 0.15, "a": 0.03, "b": 0.08, "b2": 0.08}
    items = {name: Item(loop, name, log) for name in waits}
    slots = {name: deadlines.add(items[name], wait) for name, wait in waits.items()}
    slots["b2"].discard(items["b2"])
    await asyncio.sleep(0.3)
    assert [name for name, _ in log] == ["a", "b", "c"]
    for name, when in log:
        late = when - start - waits[name]
        assert -0.002 <= late <= TICK + 0.05, (name, late)


async def test_a_deadline_set_when_another_expires_fires_in_its_turn() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    fired: list[float] = []

    class Periodic:
        def expired(self) -> None:
            fired.append(loop.time())
            if len(fired) < 4:
                deadlines.add(self, 0.05)

    start = loop.time()
    deadlines.add(Periodic(), 0.05)
    await asyncio.sleep(0.5)
    assert len(fired) == 4
    assert fired[-1] - start >= 0.2


async def test_a_far_deadline_set_on_expiry_does_not_delay_a_nearer_one() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, TICK)
    log: list[tuple[str, float]] = []
    far = Item(loop, "far", log)

    class Rescheduling:
        def expired(self) -> None:
            log.append(("first", loop.time()))
            deadlines.add(far, 1.0)

    start = loop.time()
    deadlines.add(Rescheduling(), 0.03)
    deadlines.add(Item(loop, "near", log), 0.1)
    await asyncio.sleep(0.3)
    assert [name for name, _ in log] == ["first", "near"]
    assert log[1][1] - start <= 0.1 + TICK + 0.05
