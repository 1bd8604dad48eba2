"""Per-project feeds: committed changes handed to every live subscriber, in seq order.

A feed knows the last seq it has dispatched (``head``). Changes committed in this process
arrive directly (``committed``); other processes' commits arrive as pointers (``poke``, from
PostgreSQL NOTIFY or the periodic head check), and the feed reads them from the log by
cursor, so a lost notification costs latency, never data. A subscriber goes live only once
its own catch-up from the log has reached the feed's head (``try_go_live``).

Each dispatched piece is encoded once (``sync.server_protocol.prepare_changes``), framed once
as a WebSocket message (``live.ws_frames``), and handed to every subscriber as a
``LivePiece``; each connection's protocol sends those bytes as they are, cuts what its client
already holds, and refuses a gap. This module also turns the store's rows into wire records, in one
place (``wire_changes``, ``wire_conflicts``, ``wire_updates``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from fieldsync.conflict.ledger import ConflictRow
from fieldsync.live.ws_frames import binary_message
from fieldsync.store import records as stored
from fieldsync.store.errors import StoreError
from fieldsync.store.records import LoggedChange, LogSlice
from fieldsync.sync.messages import ChangeRecord, ConflictRecord
from fieldsync.sync.server_protocol import ConflictRecordAt, PreparedChanges, prepare_changes

ReadSince = Callable[[UUID, int, int], Awaitable[LogSlice]]
READ_BATCH = 500

log = logging.getLogger(__name__)


def wire_changes(changes: Iterable[LoggedChange]) -> list[ChangeRecord]:
    return [ChangeRecord(c.seq, c.entity_type, c.entity_id, c.change) for c in changes]


def wire_conflict(conflict_id: str, row: ConflictRow | None) -> ConflictRecord:
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


def wire_conflicts(rows: Iterable[ConflictRow]) -> list[ConflictRecord]:
    """A snapshot's conflict records (WebSocket and HTTP)."""
    return [wire_conflict(row.conflict_id, row) for row in rows]


def wire_updates(updates: Iterable[stored.ConflictUpdate]) -> list[ConflictRecordAt]:
    return [ConflictRecordAt(u.seq, wire_conflict(u.conflict_id, u.row)) for u in updates]


class FeedObserver(Protocol):
    """Told when a pointer to unread changes arrives, when a feed reads the log, and what
    it dispatched (the commit-to-fan-out latency, and reads per commit)."""

    def pointer(self, project_id: UUID, seq: int) -> None: ...

    def read(self, project_id: UUID) -> None: ...

    def dispatched(self, project_id: UUID, head: int) -> None: ...


class _Unobserved:
    def pointer(self, project_id: UUID, seq: int) -> None:
        pass

    def read(self, project_id: UUID) -> None:
        pass

    def dispatched(self, project_id: UUID, head: int) -> None:
        pass


UNOBSERVED = _Unobserved()


@dataclass(frozen=True, slots=True)
class LivePiece:
    """What the feed hands every subscriber: consecutive changes, their ``changes`` frame as
    a whole WebSocket message (built once for all), and the conflict updates that go before
    them (only with a commit's first piece)."""

    prepared: PreparedChanges
    message: bytes
    updates: Sequence[ConflictRecordAt]


class LiveSubscription(Protocol):
    """One connection's interest in one project, as the feed sees it: where the client is
    (``cursor``, kept by the connection's protocol) and how to hand it a piece
    (``deliver``, called for every subscriber of every piece: it should cost little).

    A connection implements it with a slotted object of its own (``live.session``): no
    closures, so an idle subscription holds little more than its references."""

    @property
    def project_id(self) -> UUID: ...

    @property
    def cursor(self) -> int: ...

    def deliver(self, piece: LivePiece) -> None: ...


class ProjectFeed:
    def __init__(
        self, project_id: UUID, read_since: ReadSince, observer: FeedObserver = UNOBSERVED
    ) -> None:
        self.project_id = project_id
        self._name = str(project_id)
        self._observer = observer
        self.head: int | None = None  # unknown until the first subscriber goes live
        self.subscribers: set[LiveSubscription] = set()
        self._read_since = read_since
        self._wanted = 0
        self._reader: asyncio.Task[None] | None = None
        # Commits of this process not yet handed on: those made within one turn of the
        # event loop (a group commit's pushes, or every commit made while the previous
        # fan-out round ran) go out together, one message per subscriber.
        self._pending: list[LogSlice] = []

    def can_go_live(self, cursor: int) -> bool:
        """Whether a catch-up that reached ``cursor`` has reached what the feed dispatched."""
        return self.head is None or cursor >= self.head

    def try_go_live(self, subscription: LiveSubscription) -> bool:
        """Go live if the subscription's catch-up has reached what the feed dispatched."""
        cursor = subscription.cursor
        if not self.can_go_live(cursor):
            return False
        if self.head is None:
            self.head = cursor
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
        if self.head is None or self._reader is not None or changes[0].seq != self._known + 1:
            self.poke(changes[-1].seq)
            return
        self._pending.append(piece)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    @property
    def _known(self) -> int:
        """The last seq this feed has dispatched or holds to dispatch."""
        if self._pending:
            return self._pending[-1].changes[-1].seq
        return self.head if self.head is not None else 0

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if self.head is None or not pending:
            return
        if len(pending) == 1:
            self._dispatch(pending[0])
            return
        self._dispatch(
            LogSlice(
                [change for piece in pending for change in piece.changes],
                [update for piece in pending for update in piece.conflicts],
            )
        )

    def poke(self, seq: int) -> None:
        """The log holds changes up to ``seq``: read whatever this feed has not dispatched."""
        if self.head is not None and seq > max(self._known, self._wanted):
            self._observer.pointer(self.project_id, seq)
        self._wanted = max(self._wanted, seq)
        self._maybe_read()

    def _maybe_read(self) -> None:
        if self.head is None or self._wanted <= self._known or self._reader is not None:
            return
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while self.head is not None and self._wanted > self.head:
                self._observer.read(self.project_id)
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
        updates = wire_updates(piece.conflicts)
        subscribers = list(self.subscribers)
        for index, prepared in enumerate(prepare_changes(self._name, wire_changes(fresh))):
            # The conflict updates go before the first changes; each connection keeps those
            # of pushes its client has not seen.
            shared = LivePiece(
                prepared, binary_message(prepared.frame), updates if index == 0 else ()
            )
            for subscription in subscribers:
                subscription.deliver(shared)
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
