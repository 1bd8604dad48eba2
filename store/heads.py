"""The periodic head check, over any storage: what makes a lost notification harmless.

Both implementations of ``NotificationPort.poll_heads`` run this loop with their own way of
reading heads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from uuid import UUID

from fieldsync.store.errors import StoreError

log = logging.getLogger("fieldsync.store.notifications")

ReadHeads = Callable[[Sequence[UUID]], Awaitable[Mapping[UUID, int]]]


async def poll_heads(
    read_heads: ReadHeads,
    projects: Callable[[], Sequence[UUID]],
    on_pointer: Callable[[UUID, int], None],
    *,
    interval: float,
) -> None:
    """Every ``interval`` seconds, report the heads of the watched projects; until cancelled
    (a failed check is one log line, and the next one tries again)."""
    while True:
        await asyncio.sleep(interval)
        watched = list(projects())
        if not watched:
            continue
        try:
            heads = await read_heads(watched)
        except StoreError as exc:
            log.warning("%s", exc, extra={"event": "head_check_failed"})
            continue
        for project_id, head in heads.items():
            on_pointer(project_id, head)
