"""Callbacks and async iterators fed from the client's event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar, cast

__all__ = ["Listeners"]

log = logging.getLogger("fieldsync_client")

T = TypeVar("T")
_CLOSED = object()


class Listeners(Generic[T]):
    """Fan-out of events to callbacks (called on the event loop) and to async iterators.

    A callback that raises is logged and otherwise ignored: app code cannot stop sync.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callable[[T], object]] = []
        self._queues: list[asyncio.Queue[object]] = []
        self._closed = False

    def add(self, callback: Callable[[T], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that removes it."""
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def emit(self, event: T) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("a %s callback raised", self.name)
        for queue in self._queues:
            queue.put_nowait(event)

    async def stream(self) -> AsyncIterator[T]:
        """Every event from now on, until the client closes."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        if self._closed:
            return
        self._queues.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                yield cast(T, item)
        finally:
            if queue in self._queues:
                self._queues.remove(queue)

    def close(self) -> None:
        self._closed = True
        self._callbacks.clear()
        for queue in self._queues:
            queue.put_nowait(_CLOSED)
