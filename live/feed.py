"""Per-project feeds: committed changes handed to every live subscriber, in seq order.

A feed knows the last seq it has dispatched (``head``). Changes committed in this process
arrive directly (``committed``); other processes' commits arrive as pointers (``poke``, from
PostgreSQL NOTIFY or the periodic head check), and the feed reads them from the log by
cursor, so a lost notification costs latency, never data. A subscriber goes live only once
its own catch-up from the log has reached the feed's head (``try_go_live``), and every
delivery is filtered by the subscriber's cursor, so nothing is missed or sent twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol
from uuid import UUID

from fieldsync.conflict.ledger import ConflictRow
from fieldsync.store.changelog import LoggedChange, LogSlice
from fieldsync.store.conflicts import ConflictUpdate
from fieldsync.store.errors import StoreError
from fieldsync.sync.codec import encode
from fieldsync.sync.messages import ChangeRecord, Changes, ConflictRecord, Conflicts

ReadSince = Callable[[UUID, int, int], Awaitable[LogSlice]]
READ_BATCH = 500
# A Changes frame stays well under the protocol's frame limit whatever the change sizes.
FRAME_BUDGET_BYTES = 1024 * 1024
# A conflict record is at most a few tens of KiB (strings in it are cut at 4,096 chars).
CONFLICTS_PER_FRAME = 100

log = logging.getLogger(__name__)


class FeedObserver(Protocol):
    """Told when a pointer to unread changes arrives and what a feed dispatched (the
    commit-to-fan-out latency)."""

    def pointer(self, project_id: UUID, seq: int) -> None: ...

    def dispatched(self, project_id: UUID, head: int) -> None: ...


class _Unobserved:
    def pointer(self, project_id: UUID, seq: int) -> None:
        pass

    def dispatched(self, project_id: UUID, head: int) -> None:
        pass


UNOBSERVED = _Unobserved()


class LiveSubscription:
    """One connection's interest in one project; ``deliver`` is called by the feed."""

    def __init__(
        self,
        project_id: UUID,
        cursor: int,
        send_live: Callable[[bytes], bool],
        on_overflow: Callable[[], None],
    ) -> None:
        self.project_id = project_id
        self.cursor = cursor
        self._send_live = send_live
        self._on_overflow = on_overflow
        self.overflowed = False

    def deliver(self, records: Sequence[ChangeRecord], frame: bytes) -> None:
        if self.overflowed or not records or records[-1].seq <= self.cursor:
            return
        if records[0].seq <= self.cursor:
            fresh = tuple(r for r in records if r.seq > self.cursor)
            frame = encode(Changes(str(self.project_id), fresh))
            records = fresh
        if self._send_live(frame):
            self.cursor = records[-1].seq
        else:
            self._overflow()

    def deliver_conflicts(self, frames: Sequence[bytes]) -> None:
        """Conflict updates of the changes this subscription is sent next."""
        for frame in frames:
            if self.overflowed:
                return
            if not self._send_live(frame):
                self._overflow()

    def _overflow(self) -> None:
        self.overflowed = True
        self._on_overflow()


def change_records(changes: Iterable[LoggedChange]) -> tuple[ChangeRecord, ...]:
    return tuple(ChangeRecord(c.seq, c.entity_type, c.entity_id, c.change) for c in changes)


def change_frames(
    project_id: UUID, changes: Sequence[LoggedChange]
) -> list[tuple[tuple[ChangeRecord, ...], bytes]]:
    """Changes as consecutive Changes frames of at most about FRAME_BUDGET_BYTES each."""
    frames = []
    batch: list[LoggedChange] = []
    size = 0
    for change in changes:
        if batch and size + len(change.change) > FRAME_BUDGET_BYTES:
            frames.append(_frame(project_id, batch))
            batch, size = [], 0
        batch.append(change)
        size += len(change.change) + 64
    if batch:
        frames.append(_frame(project_id, batch))
    return frames


def _frame(
    project_id: UUID, changes: Sequence[LoggedChange]
) -> tuple[tuple[ChangeRecord, ...], bytes]:
    records = change_records(changes)
    return records, encode(Changes(str(project_id), records))


def conflict_record(conflict_id: str, row: ConflictRow | None) -> ConflictRecord:
    """The wire form of a conflicts read-model row; None: the row was removed."""
    if row is None:
        return ConflictRecord(conflict_id, "removed")
    return ConflictRecord(
        row.conflict_id,
        row.status,
        row.kind,
        row.entity_ids,
        row.fields,
        row.opened_seq,
        row.resolved_seq,
        dict(row.details),
    )


def conflict_frames(project_id: UUID, records: Sequence[ConflictRecord]) -> list[bytes]:
    """Conflicts frames of at most CONFLICTS_PER_FRAME records each."""
    return [
        encode(Conflicts(str(project_id), tuple(records[i : i + CONFLICTS_PER_FRAME])))
        for i in range(0, len(records), CONFLICTS_PER_FRAME)
    ]


def snapshot_conflict_frames(project_id: UUID, rows: Iterable[ConflictRow]) -> list[bytes]:
    """Every conflict record of a snapshot, as Conflicts frames (WebSocket and HTTP)."""
    return conflict_frames(project_id, [conflict_record(row.conflict_id, row) for row in rows])


def update_frames(project_id: UUID, updates: Sequence[ConflictUpdate]) -> list[bytes]:
    """Conflict updates as frames; a record updated twice is sent once, in its latest state."""
    latest: dict[str, ConflictRecord] = {}
    for update in updates:
        latest.pop(update.conflict_id, None)
        latest[update.conflict_id] = conflict_record(update.conflict_id, update.row)
    return conflict_frames(project_id, list(latest.values()))


def log_frames(project_id: UUID, piece: LogSlice) -> list[bytes]:
    """A slice of the log as it goes to a client: its conflict updates, then its changes.

    Conflicts go first so that a client which stores each message in its own transaction
    never holds a cursor past a conflict update it has not stored: if it stops between the
    two, it resumes from the old cursor and receives both again.
    """
    changes = [frame for _, frame in change_frames(project_id, piece.changes)]
    return update_frames(project_id, piece.conflicts) + changes


class ProjectFeed:
    def __init__(
        self, project_id: UUID, read_since: ReadSince, observer: FeedObserver = UNOBSERVED
    ) -> None:
        self.project_id = project_id
        self._observer = observer
        self.head: int | None = None  # unknown until the first subscriber goes live
        self.subscribers: set[LiveSubscription] = set()
        self._read_since = read_since
        self._wanted = 0
        self._reader: asyncio.Task[None] | None = None

    def try_go_live(self, subscription: LiveSubscription) -> bool:
        """Go live if the subscription's catch-up has reached what the feed dispatched."""
        if self.head is not None and subscription.cursor < self.head:
            return False
        if self.head is None:
            self.head = subscription.cursor
        self.subscribers.add(subscription)
        self._maybe_read()
        return True

    def leave(self, subscription: LiveSubscription) -> None:
        self.subscribers.discard(subscription)

    def committed(self, piece: LogSlice) -> None:
        """Changes this process just committed, in seq order, with their conflict updates."""
        changes = piece.changes
        if not changes:
            return
        if self.head is not None and changes[0].seq == self.head + 1 and self._reader is None:
            self._dispatch(piece)
        else:
            self.poke(changes[-1].seq)

    def poke(self, seq: int) -> None:
        """The log holds changes up to ``seq``: read whatever this feed has not dispatched."""
        if self.head is not None and seq > max(self.head, self._wanted):
            self._observer.pointer(self.project_id, seq)
        self._wanted = max(self._wanted, seq)
        self._maybe_read()

    def _maybe_read(self) -> None:
        if self.head is None or self._wanted <= self.head or self._reader is not None:
            return
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while self.head is not None and self._wanted > self.head:
                piece = await self._read_since(self.project_id, self.head, READ_BATCH)
                if not piece.changes:
                    break
                self._dispatch(piece)
        except StoreError as exc:
            # The periodic head check pokes again; the log is the truth, nothing is lost.
            log.warning(
                "reading project %s from the log failed: %s",
                self.project_id,
                exc,
                extra={"event": "feed_read_failed"},
            )
        except Exception:
            log.exception("reading project %s from the log failed", self.project_id)
        finally:
            self._reader = None

    def _dispatch(self, piece: LogSlice) -> None:
        assert self.head is not None
        start = self.head
        fresh = [c for c in piece.changes if c.seq > start]
        if not fresh:
            return
        self.head = fresh[-1].seq
        subscribers = list(self.subscribers)
        updates = [u for u in piece.conflicts if u.seq > start]
        frames = update_frames(self.project_id, updates) if updates else []
        for subscription in subscribers if frames else ():
            if subscription.cursor <= start:
                subscription.deliver_conflicts(frames)
            else:
                # It read part of this slice during its catch-up, updates included.
                own = [u for u in updates if u.seq > subscription.cursor]
                subscription.deliver_conflicts(update_frames(self.project_id, own))
        for records, frame in change_frames(self.project_id, fresh):
            for subscription in subscribers:
                subscription.deliver(records, frame)
        self._observer.dispatched(self.project_id, self.head)


class Hub:
    """The feeds of this process, keyed by project."""

    def __init__(self, read_since: ReadSince, observer: FeedObserver = UNOBSERVED) -> None:
        self._read_since = read_since
        self.observer = observer  # set by the app once its metrics exist
        self._feeds: dict[UUID, ProjectFeed] = {}

    def feed(self, project_id: UUID) -> ProjectFeed:
        feed = self._feeds.get(project_id)
        if feed is None:
            feed = self._feeds[project_id] = ProjectFeed(
                project_id, self._read_since, self.observer
            )
        return feed

    def leave(self, subscription: LiveSubscription) -> None:
        feed = self._feeds.get(subscription.project_id)
        if feed is not None:
            feed.leave(subscription)
            if not feed.subscribers:
                del self._feeds[subscription.project_id]

    def committed(self, project_id: UUID, piece: LogSlice) -> None:
        feed = self._feeds.get(project_id)
        if feed is not None:
            feed.committed(piece)

    def poke(self, project_id: UUID, seq: int) -> None:
        feed = self._feeds.get(project_id)
        if feed is not None:
            feed.poke(seq)

    def watched_projects(self) -> list[UUID]:
        return list(self._feeds)
