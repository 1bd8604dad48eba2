"""Which event loop a serving process runs on.

A resume storm and a country of idle sockets are mostly the event loop's own work: accepting,
making transports, reading, scheduling callbacks. uvloop does that work in C on libuv, and
measured on this server (``docs/scaling.md``) a resume costs less CPU on it, an idle socket
holds less memory, and more of that memory goes back when the sockets close. It also meets
a full descriptor table quietly: libuv closes what it cannot accept, where asyncio 3.11
logs a traceback for every failed ``accept`` and retries in a spin. So ``auto`` serves on
uvloop wherever it is installed (it is a dependency of the server on every platform it
supports), and on asyncio's own loop elsewhere; ``asyncio`` keeps the standard loop.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

LOOP_CHOICES = ("auto", "uvloop", "asyncio")
DEFAULT_LOOP = "auto"

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopUnavailableError(ValueError):
    """The loop asked for cannot be made here."""


def loop_factory(choice: str) -> tuple[str, LoopFactory]:
    """The loop's name and a factory for it, for ``asyncio.Runner(loop_factory=...)``."""
    if choice not in LOOP_CHOICES:
        known = ", ".join(LOOP_CHOICES)
        raise LoopUnavailableError(f"unknown event loop {choice!r}; one of {known}")
    if choice in ("auto", "uvloop"):
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as exc:
            if choice == "uvloop":
                message = f"--loop uvloop: uvloop cannot be imported ({exc})"
                raise LoopUnavailableError(message) from exc
        else:
            new_loop: LoopFactory = uvloop.new_event_loop
            return "uvloop", new_loop
    return "asyncio", asyncio.new_event_loop
