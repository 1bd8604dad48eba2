"""Freeing a lost connection's transport by reference counting alone."""

from __future__ import annotations

import asyncio


def release_transport(transport: asyncio.BaseTransport | None) -> None:
    """Let a lost connection's transport be freed as soon as nothing refers to it.

    asyncio's socket transport (CPython 3.11) keeps its read callback as a bound
    method of itself: a cycle, so a closed transport and its socket wait for the cyclic
    collector's next full pass, which a server with many long-lived objects runs seldom.
    Held among the live connections' memory, they keep it from going back to the system
    after a wave of closes. Once the connection is lost nothing reads from it, so the
    callback can go."""
    if transport is not None and getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[attr-defined]
