"""The records that cross the storage ports: what an append answers, what the log and a
snapshot hold, what a rebuild reports.

Every storage implementation returns these and only these (never a driver's row type), so
the shells above ``store/`` depend on this module and ``store.ports``, not on a database.
Pure data: no I/O, no driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from fieldsync.conflict.ledger import ConflictRow
from fieldsync.model.rejections import Rejection

__all__ = [
    "Accepted",
    "AppendResult",
    "ConflictUpdate",
    "LogSlice",
    "LoggedChange",
    "LoggedHash",
    "RebuildReport",
    "Rejected",
    "ReplicaReport",
    "SnapshotEntity",
]


@dataclass(frozen=True, slots=True)
class Accepted:
    """Every change of the entity is in the log; ``seqs`` follows the input order."""

    entity_id: str
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """None of the entity's changes were logged."""

    entity_id: str
    rejection: Rejection


AppendResult = Accepted | Rejected


@dataclass(frozen=True, slots=True)
class LoggedChange:
    seq: int
    entity_type: str
    entity_id: str
    hash: bytes
    change: bytes


@dataclass(frozen=True, slots=True)
class LoggedHash:
    """Where the log holds a change: its entity, seq and who sent it."""

    hash: bytes
    entity_id: str
    seq: int
    sender: str


@dataclass(frozen=True, slots=True)
class ConflictUpdate:
    """A conflict as changed by the transaction whose changes end at ``seq``.

    ``row`` is the row's state (the latest, when read back from storage), or None when the
    row was removed (a concurrent edit widened it into another conflict).
    """

    seq: int
    conflict_id: str
    row: ConflictRow | None


@dataclass(frozen=True, slots=True)
class LogSlice:
    """Consecutive logged changes and the conflict updates of the transactions they end."""

    changes: Sequence[LoggedChange]
    conflicts: Sequence[ConflictUpdate] = ()

    @property
    def last_seq(self) -> int | None:
        return self.changes[-1].seq if self.changes else None


@dataclass(frozen=True, slots=True)
class SnapshotEntity:
    entity_type: str
    entity_id: str
    version: int
    heads: tuple[bytes, ...]
    document: bytes  # Automerge bytes: Document.load() gives the entity's document


@dataclass(slots=True)
class RebuildReport:
    projects: int = 0
    entities: int = 0
    changes: int = 0
    conflicts: int = 0
    conflicts_rewritten: list[str] = field(default_factory=list)
    cache_mismatches: list[str] = field(default_factory=list)
    invalid_documents: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.cache_mismatches and not self.invalid_documents

    def __str__(self) -> str:
        text = (
            f"rebuilt read models of {self.projects} projects: {self.entities} entities "
            f"from {self.changes} changes"
        )
        if self.cache_mismatches:
            text += f"; cached documents differing from the log: {self.cache_mismatches}"
        text += f"; {self.conflicts} conflict records"
        if self.conflicts_rewritten:
            text += f", of which rewritten (they differed from the log): {self.conflicts_rewritten}"
        if self.invalid_documents:
            text += f"; logged documents failing their schema: {self.invalid_documents}"
        return text


@dataclass(frozen=True, slots=True)
class ClientSeen:
    """A member's client as a sync session last saw it in one project: its ``hello``
    (client id and version, outbox age), when that session began (``hello_at``), when it
    was last seen and whether the session is still open. A record of an older session
    never replaces a newer one's (``member_sync_health`` in migration 0005)."""

    project_id: UUID
    user_id: UUID
    client_id: str
    client_version: str | None
    outbox_age_ms: int | None
    hello_at: datetime
    seen_at: datetime
    connected: bool


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """How reads went between a read replica and the primary, since the storage opened."""

    usable: bool  # whether reads may go to the replica now (its last check)
    lag_seconds: float | None  # its replay lag at the last check; None: not measured
    reads: Mapping[tuple[str, str], int]  # (read, served_by) -> reads served
    fallbacks: Mapping[tuple[str, str], int]  # (read, reason) -> reads sent to the primary
