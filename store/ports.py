"""The storage ports: what the server's shells need from storage, and nothing more.

The shells (``live/``, ``server.py``, ``cli.py``) receive a :class:`Storage` and use it only
through these interfaces, named by what the server does with them, not by tables:

- :class:`ChangeLogPort`: append a push, read the log by cursor (for the live feeds, or
  for a client catching up), the head.
- :class:`MembershipPort`: may this user enter this project, at which level.
- :class:`SnapshotPort`: one project's documents and conflict records at one cursor.
- :class:`NotificationPort`: tell other processes of a new head; hear theirs, and of
  membership removals; check heads periodically (what makes a lost notice harmless).
- :class:`HealthPort`: can storage serve right now, and why not.
- :class:`AdminPort`: the server-managed rows (accounts, users, projects, members).
- :class:`MaintenancePort`: schema migrations and rebuilding read models from the log.
- :class:`QueryPort`: pages of the read models, each with the log seq it reflects.
- :class:`SyncHealthPort`: record what sync sessions saw of members' clients.
- :class:`AttachmentPort`: attachment metadata, uploads in progress, the processing queue
  (PostgreSQL only: the queue is pgqueuer; see ``docs/attachments.md``).

Two implementations satisfy them: ``store.postgres.PostgresStorage`` (the production one,
the only code that talks to a database driver) and ``store.memory.MemoryStorage`` (pure
Python, for tests and for running the server without a database). One contract suite
(``tests/store/contract``) runs against both. Everything crossing a port is a record of
``store.records`` or ``store.accounts`` (never a driver's row, never a connection), and
every failure is a ``store.errors.StoreError``: ``DatabaseUnavailable`` when storage cannot
serve now (a retry later may succeed), ``DatabaseFailed`` when it refused the operation,
and the specific errors each method names. See ``docs/storage.md``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol
from uuid import UUID

from fieldsync.conflict.ledger import ConflictRow
from fieldsync.media.limits import AttachmentLimits
from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.model.merge import EntityChanges
from fieldsync.query.items import Activity, Conflict, MemberHealth, Summoning
from fieldsync.query.specs import ActivityQuery, ConflictQuery, MemberQuery, Page, SummoningQuery
from fieldsync.store.accounts import AccountRow, MemberRow, ProjectDetail, ProjectRow, UserRow
from fieldsync.store.append_plan import OnCommit
from fieldsync.store.attachment_records import AttachmentRow, Reservation, UploadRow, Variant
from fieldsync.store.records import (
    AppendResult,
    ClientSeen,
    LogSlice,
    RebuildReport,
    ReplicaReport,
    SnapshotEntity,
)

PointerHandler = Callable[[UUID, int], None]
"""Hears that a project's log reaches at least a seq (project, seq)."""

RemovalHandler = Callable[[UUID, UUID], None]
"""Hears that a user was taken out of a project (project, user)."""


class ChangeLogPort(Protocol):
    """The change log of every project: the truth the rest is derived from."""

    @property
    def limits(self) -> Limits: ...

    async def append(
        self,
        project_id: UUID,
        batch: Sequence[EntityChanges],
        sender: str,
        *,
        as_member: UUID | None = None,
    ) -> list[AppendResult]:
        """Append each entity's changes all-or-nothing; one result per item, in order.

        Seqs are gapless per project and become visible in order. A change already logged
        keeps its original seq (a retry appends nothing). ``as_member``: the member
        pushing, whose write rule (level, summonings) is read in the same transaction and
        applied to every entity that would log new changes; None applies no rule.
        Answers only after the commit. Raises UnknownProject, BatchTooLarge, or another
        StoreError (then the outcome is unknown and sending the same changes again is
        safe).
        """
        ...

    async def read_since(self, project_id: UUID, cursor: int, limit: int = 1_000) -> LogSlice:
        """Logged changes with seq > cursor, in seq order, at most ``limit``, with the
        conflict updates of the transactions they end (UnknownProject is not raised: an
        unknown project has an empty log)."""
        ...

    async def catch_up(self, project_id: UUID, cursor: int, limit: int = 1_000) -> LogSlice:
        """``read_since`` for a client catching up from its cursor. It may come from a copy
        of the log that trails the newest commits (a read replica), so a non-empty slice
        may end before the head; it never holds a seq the log does not hold, never skips
        one, and an empty slice means nothing past ``cursor`` was committed when it was
        read, exactly as ``read_since``."""
        ...

    async def head(self, project_id: UUID) -> int:
        """The project's latest seq (0 before its first change); UnknownProject."""
        ...


class MembershipPort(Protocol):
    """Who may enter a project, as storage says now."""

    async def level(self, project_id: UUID, user_id: UUID) -> str | None:
        """The user's level in the project, or None (not a member, or no such project)."""
        ...

    async def levels(self, pairs: Sequence[tuple[UUID, UUID]]) -> dict[tuple[UUID, UUID], str]:
        """The levels of those (project, user) pairs that are memberships, in one read."""
        ...

    async def still_member_of(self, user_id: UUID, project_ids: Sequence[UUID]) -> set[UUID]:
        """Those of ``project_ids`` the user is a member of."""
        ...


class Snapshot(Protocol):
    """One project's entities and conflict records as of exactly ``cursor``; valid only
    while its context is open."""

    @property
    def project_id(self) -> UUID: ...

    @property
    def cursor(self) -> int: ...

    @property
    def started(self) -> float:
        """When it was opened (``time.monotonic``), for the snapshot metrics."""
        ...

    @property
    def document_bytes(self) -> int:
        """Document bytes of the entities read so far."""
        ...

    async def count(self) -> int: ...

    def entities(self, prefetch: int = 128) -> AsyncIterator[SnapshotEntity]:
        """Every entity, in entity-id order (streamed: memory stays bounded)."""
        ...

    async def conflicts(self) -> list[ConflictRow]:
        """Every conflict record (open and resolved), by id."""
        ...


class SnapshotPort(Protocol):
    def open(self, project_id: UUID) -> AbstractAsyncContextManager[Snapshot]:
        """Hold a consistent view of ``project_id`` while the caller streams it;
        UnknownProject on entering."""
        ...


class NotificationPort(Protocol):
    """Pointers between server processes sharing one storage: never payloads, so a lost
    one delays delivery until the next head check but loses nothing."""

    async def notify_head(self, project_id: UUID, seq: int) -> None:
        """Tell every process (this one too) that the project's log reaches ``seq``."""
        ...

    async def listen_heads(self, on_pointer: PointerHandler) -> None:
        """Deliver every head pointer until cancelled, reconnecting by itself."""
        ...

    async def listen_removals(
        self, on_removed: RemovalHandler, *, on_connected: Callable[[], None] | None = None
    ) -> None:
        """Deliver every membership removal until cancelled. ``on_connected`` runs each
        time listening (re)starts, after which no removal is missed."""
        ...

    async def poll_heads(
        self,
        projects: Callable[[], Sequence[UUID]],
        on_pointer: PointerHandler,
        *,
        interval: float,
    ) -> None:
        """Every ``interval`` seconds report the heads of the projects ``projects()`` names,
        until cancelled (a failed check is one log line, and the next one tries again)."""
        ...


class Probe(Protocol):
    """A health check with resources of its own (a busy storage must not look down)."""

    async def problem(self, within: float) -> str | None:
        """Why storage cannot serve now, or None when it can (never fails)."""
        ...

    def close(self) -> None: ...


class HealthPort(Protocol):
    def probe(self) -> Probe:
        """A new probe of its own, for a periodic watch; the caller closes it."""
        ...

    async def components(self, within: float) -> dict[str, str]:
        """Parts whose failure does not stop serving (a read replica: reads then go to the
        primary), each with its state in words, for the health answer (never fails)."""
        ...


class AdminPort(Protocol):
    """Accounts, users, projects and members: created through the server's API, never
    edited offline. Refusals are ``store.errors.AdminError``s (UnknownProject for an
    unknown project); lists come in creation order, a page at a time (``after``: the last
    id of the previous page, which must exist; ``limit`` None: every row)."""

    async def create_account(self, name: str) -> UUID: ...

    async def create_user(
        self, display_name: str, account_id: UUID | None = None, email: str | None = None
    ) -> UUID:
        """A new user; emails are unique among users, compared case-insensitively."""
        ...

    async def create_project(self, account_id: UUID, name: str) -> UUID:
        """A new project of ``account_id`` with an empty change log (head seq 0)."""
        ...

    async def add_member(self, project_id: UUID, user_id: UUID, level: str) -> str | None:
        """Make the user a member at ``level`` (a member gets the new level); the level
        they had before, or None."""
        ...

    async def remove_member(self, project_id: UUID, user_id: UUID) -> str:
        """Take the user out (every process hears of it when it commits); the level they
        had. NotAMember when there is nobody to remove."""
        ...

    async def require_user(self, user_id: UUID) -> None:
        """UnknownUser unless the user exists."""
        ...

    async def list_accounts(
        self, *, after: UUID | None = None, limit: int | None = None
    ) -> list[AccountRow]: ...

    async def list_users(
        self,
        *,
        account_id: UUID | None = None,
        after: UUID | None = None,
        limit: int | None = None,
    ) -> list[UserRow]: ...

    async def list_projects(
        self,
        *,
        account_id: UUID | None = None,
        after: UUID | None = None,
        limit: int | None = None,
    ) -> list[ProjectRow]: ...

    async def show_project(self, project_id: UUID) -> ProjectDetail: ...

    async def list_members(
        self, project_id: UUID, *, after: UUID | None = None, limit: int | None = None
    ) -> list[MemberRow]: ...


class MaintenancePort(Protocol):
    async def migrate(self) -> list[int]:
        """Apply every pending schema migration; the versions applied (empty: up to date)."""
        ...

    async def check_schema(self) -> None:
        """SchemaTooNew or SchemaOutdated unless storage matches this code exactly."""
        ...

    async def rebuild_read_models(self, project_id: UUID | None) -> RebuildReport:
        """Recompute one project's (or every project's) read models and conflict records
        from the log alone."""
        ...


class QueryPort(Protocol):
    """Pages of one project's read models for the HTTP query API (``query.specs`` says
    what each filter means). Each page's rows and its ``seq`` come from one consistent
    view: the rows are exactly the projection of the log up to ``seq``. Raises
    UnknownProject for a project that does not exist."""

    async def activities(self, project_id: UUID, query: ActivityQuery) -> Page[Activity]:
        """Sorted by ``(starts_at, entity_id)``."""
        ...

    async def summonings(self, project_id: UUID, query: SummoningQuery) -> Page[Summoning]:
        """Sorted by ``(starts_at, entity_id)``; deleted summonings left out."""
        ...

    async def conflicts(self, project_id: UUID, query: ConflictQuery) -> Page[Conflict]:
        """Sorted by ``(opened_seq, conflict_id)``."""
        ...

    async def member_health(self, project_id: UUID, query: MemberQuery) -> Page[MemberHealth]:
        """Every current member, sorted by user id, with their clients' sync health."""
        ...


class SyncHealthPort(Protocol):
    async def record(self, seen: Sequence[ClientSeen]) -> None:
        """Keep each client's latest record (one of an older session than the one kept is
        ignored); records of members since removed, or of unknown projects, are dropped."""
        ...


class AttachmentPort(Protocol):
    """Attachment metadata (``store.attachment_records``). Refusals of the upload path are
    ``AttachmentRefusedError`` (``OffsetMismatchError`` for a part at the wrong offset)."""

    async def access(
        self, project_id: UUID, user_id: UUID, attachment_id: str
    ) -> tuple[str | None, AttachmentRow | None]:
        """The user's level in the project (None: not a member, or no such project) and the
        attachment of that id in whichever project it is, read together."""
        ...

    async def upload(self, attachment_id: str) -> UploadRow | None: ...

    async def begin_upload(self, upload: UploadRow, limits: AttachmentLimits) -> Reservation:
        """Record a new upload (or return the one already recorded under its id), within
        the project's and the user's limits; also whether the project already holds an
        attachment of these bytes."""
        ...

    async def part_stored(self, attachment_id: str, offset: int, length: int) -> UploadRow:
        """Count a part stored at ``offset``: only when the upload holds exactly ``offset``
        bytes (else OffsetMismatchError with what it holds)."""
        ...

    async def drop_upload(self, attachment_id: str) -> None: ...

    async def finish_upload(self, row: AttachmentRow) -> None:
        """Record the attachment (status uploaded), forget its upload and queue its
        processing, all in one transaction; a second call changes nothing."""
        ...

    async def start_processing(self, attachment_id: str) -> AttachmentRow | None:
        """Count a processing try and set status processing (unless already final)."""
        ...

    async def finish_processing(
        self,
        attachment_id: str,
        status: str,
        *,
        failure: str | None = None,
        variants: Mapping[str, Variant] | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None: ...

    async def entity_document(self, project_id: UUID, entity_id: str) -> bytes | None:
        """The saved document of one entity (None: no such entity in the project)."""
        ...

    async def project_settings_document(self, project_id: UUID) -> bytes | None: ...

    async def collectable(self, older_than_seconds: float) -> list[AttachmentRow]: ...

    async def referenced(self, project_id: UUID, attachment_ids: Sequence[str]) -> set[str] | None:
        """Which of ``attachment_ids`` a non-deleted activity or location of the project
        lists (from the read models); None when the read models cannot tell yet."""
        ...

    async def idle_uploads(self, idle_seconds: float) -> list[UploadRow]:
        """Unfinished uploads no part has reached for ``idle_seconds``."""
        ...

    async def forget_idle_upload(self, upload: UploadRow) -> bool:
        """Forget an upload of ``idle_uploads`` unless a part reached it since."""
        ...

    async def mark_unreferenced(
        self, unreferenced: Sequence[str], referenced: Sequence[str], grace_seconds: float
    ) -> list[str]: ...

    async def mark_deleted(self, attachment_id: str) -> bool: ...


class PoolGauges(Protocol):
    """Connection counts, for the metrics (a storage without connections has none)."""

    def get_size(self) -> int: ...

    def get_idle_size(self) -> int: ...

    def get_max_size(self) -> int: ...


class ReplicaGauges(Protocol):
    """How reads went between a read replica and the primary, for the metrics."""

    def report(self) -> ReplicaReport: ...


class Storage(Protocol):
    """Every port of one storage. The shells receive this, never a connection or a pool."""

    @property
    def membership(self) -> MembershipPort: ...

    @property
    def snapshots(self) -> SnapshotPort: ...

    @property
    def notifications(self) -> NotificationPort: ...

    @property
    def health(self) -> HealthPort: ...

    @property
    def admin(self) -> AdminPort: ...

    @property
    def maintenance(self) -> MaintenancePort: ...

    @property
    def queries(self) -> QueryPort: ...

    @property
    def sync_health(self) -> SyncHealthPort: ...

    @property
    def pool_gauges(self) -> PoolGauges | None: ...

    @property
    def replica_gauges(self) -> ReplicaGauges | None:
        """None unless reads are routed to a read replica."""
        ...

    @property
    def attachments(self) -> AttachmentPort | None:
        """None for a storage without attachments (the in-memory one)."""
        ...

    def change_log(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        on_commit: OnCommit | None = None,
        on_append: Callable[[UUID, int, int], None] | None = None,
        on_conflicts_found: Callable[[Sequence[str]], None] | None = None,
    ) -> ChangeLogPort:
        """This process's change log (with its own document cache), whose commits it
        hears: ``on_commit`` for the live fan-out, the others for the metrics."""
        ...

    async def close(self) -> None:
        """Release what it holds (connections); graceful, never fails."""
        ...
