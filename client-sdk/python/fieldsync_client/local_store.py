"""The local copy of the opened projects: one SQLite file.

Per project it holds every entity document (Automerge saved bytes, its type and whether it
is deleted), the cursor (the highest server seq the documents include; NULL until the first
snapshot), the outbox: local changes the server has not acknowledged yet, and those it
refused (kept with the reason until the app dismisses them), and the last known record of
each of the project's conflicts. The server sends conflict records before the changes they
belong to, and a snapshot's records are stored with the snapshot, so the stored cursor never
runs ahead of the stored conflicts.

Durability: WAL with ``synchronous=FULL``, so a transaction is on disk when COMMIT returns,
and every write happens inside :meth:`LocalStore.transaction`. A local edit writes the new
document and its outbox row in one transaction; remote changes write the documents and the
new cursor in one transaction. A process killed at any instant leaves the last committed
state, which always matches: no document holds a change the outbox or cursor does not
account for.

The file is opened in exclusive locking mode: a second client on the same file (in this or
another process) gets :class:`StoreLocked` instead of two sync loops racing each other.
All methods must be called from one thread at a time (the client's event loop thread).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from fieldsync.sync.messages import ConflictRecord
from fieldsync_client.conflicts import record_from_json, record_to_json, split
from fieldsync_client.errors import StoreError, StoreLocked

__all__ = [
    "SCHEMA_VERSION",
    "LocalStore",
    "OutboxEntry",
    "ProjectRecord",
    "RejectedChange",
    "StoredEntity",
]

SCHEMA_VERSION = 3
_IDS_PER_QUERY = 500  # ids bound in one IN (...) list; SQLite allows at least 999

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE projects (
    project_id     TEXT PRIMARY KEY,
    cursor         INTEGER,          -- NULL: never bootstrapped from a snapshot
    last_synced_at REAL              -- unix seconds: caught up with nothing waiting
);
CREATE TABLE entities (
    project_id  TEXT NOT NULL REFERENCES projects (project_id),
    entity_id   TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    document    BLOB NOT NULL,       -- Automerge saved format
    deleted     INTEGER NOT NULL,    -- 1 when the document says deleted: true
    PRIMARY KEY (project_id, entity_id)
) WITHOUT ROWID;
CREATE INDEX entities_by_type ON entities (project_id, entity_type, entity_id);
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order the changes were made in
    project_id  TEXT NOT NULL REFERENCES projects (project_id),
    entity_type TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    change      BLOB NOT NULL,       -- the Automerge change, as pushed
    hash        BLOB NOT NULL,       -- its Automerge hash
    created_at  REAL NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'rejected')),
    code        TEXT,                -- why it was rejected
    message     TEXT,
    details     TEXT,                -- JSON
    rejected_at REAL
);
CREATE INDEX outbox_by_state ON outbox (project_id, state, id);
CREATE INDEX outbox_by_entity ON outbox (project_id, entity_id, id);
"""

# Schema version 2: the last known record of every conflict of the project (open and
# resolved), as the server sent it (sync.messages.ConflictRecord, as JSON).
_CONFLICTS = """
CREATE TABLE conflicts (
    project_id  TEXT NOT NULL REFERENCES projects (project_id),
    conflict_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (project_id, conflict_id)
) WITHOUT ROWID;
"""


# Schema version 3: attachments waiting to upload, beside the outbox. The bytes are a local
# copy under the store's attachments folder, named by their SHA-256.
_UPLOADS = """
CREATE TABLE uploads (
    attachment_id TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (project_id),
    sha256        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    file_name     TEXT,
    created_at    REAL NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('waiting', 'uploaded', 'refused')),
    code          TEXT,
    message       TEXT
) WITHOUT ROWID;
CREATE INDEX uploads_by_state ON uploads (state, created_at)
"""


@dataclass(frozen=True, slots=True)
class UploadEntry:
    attachment_id: str
    project_id: str
    sha256: str
    size: int
    file_name: str | None
    state: str  # waiting, uploaded, refused
    code: str | None
    message: str | None


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    project_id: str
    cursor: int | None
    last_synced_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredEntity:
    entity_type: str
    document: bytes
    deleted: bool


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A local change waiting for the server's acknowledgement."""

    id: int
    project_id: str
    entity_type: str
    entity_id: str
    change: bytes
    hash: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RejectedChange:
    """A local change the server refused (or that built on one it refused).

    ``code`` is an entity reject code of the protocol (``schema_violation``,
    ``wrong_project``, ...), a push error code (``forbidden``), or ``depends_on_rejected``
    for a later local edit of the same entity, which cannot go in without the refused one.
    The change is no longer in the local document.
    """

    id: int
    project_id: str
    entity_type: str
    entity_id: str
    code: str
    message: str
    details: Mapping[str, object]
    created_at: datetime
    rejected_at: datetime
    hash: bytes


class LocalStore:
    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 1.0) -> None:
        self.path = os.fspath(path)
        try:
            self._db = sqlite3.connect(
                self.path, timeout=lock_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the local store {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA locking_mode = EXCLUSIVE")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"the local store {self.path} cannot use WAL (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreLocked(
                    f"the local store {self.path} is in use by another client; "
                    "close it first (one client per store file)"
                ) from exc
            raise StoreError(f"cannot open the local store {self.path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise
        self.client_id = self._meta("client_id")

    def _migrate(self) -> None:
        with self.transaction():  # BEGIN IMMEDIATE: takes the exclusive lock for good
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._run(_SCHEMA)
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('client_id', ?)",
                    (f"py-{uuid.uuid4().hex}",),
                )
                version = 1
            if version == 1:
                self._run(_CONFLICTS)
                version = 2
            if version == 2:
                self._run(_UPLOADS)
                version = 3
            self._db.execute(f"PRAGMA user_version = {version}")
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"the local store {self.path} has schema version {version}; "
                    f"this SDK reads version {SCHEMA_VERSION}"
                )

    def _run(self, script: str) -> None:
        # executescript would COMMIT the open transaction: run statement by statement
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"the local store {self.path} has no {key}")
        value: str = row[0]
        return value

    def close(self) -> None:
        self._db.close()

    # --- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable write: committed when the block ends, rolled back on error."""
        if self._db.in_transaction:
            raise RuntimeError("transactions do not nest")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _writing(self) -> None:
        if not self._db.in_transaction:
            raise RuntimeError("writes happen inside LocalStore.transaction()")

    # --- projects -------------------------------------------------------------------------

    def project(self, project_id: str) -> ProjectRecord | None:
        row = self._db.execute(
            "SELECT cursor, last_synced_at FROM projects WHERE project_id = ?", (project_id,)
        ).fetchone()
        if row is None:
            return None
        return ProjectRecord(project_id, row[0], _time(row[1]))

    def add_project(self, project_id: str) -> None:
        self._writing()
        self._db.execute(
            "INSERT INTO projects (project_id) VALUES (?) ON CONFLICT DO NOTHING", (project_id,)
        )

    def set_cursor(self, project_id: str, cursor: int) -> None:
        self._writing()
        self._db.execute(
            "UPDATE projects SET cursor = ? WHERE project_id = ?", (cursor, project_id)
        )

    def set_last_synced(self, project_id: str, at: datetime) -> None:
        self._writing()
        self._db.execute(
            "UPDATE projects SET last_synced_at = ? WHERE project_id = ?",
            (at.timestamp(), project_id),
        )

    # --- entities -------------------------------------------------------------------------

    def entity(self, project_id: str, entity_id: str) -> StoredEntity | None:
        row = self._db.execute(
            "SELECT entity_type, document, deleted FROM entities"
            " WHERE project_id = ? AND entity_id = ?",
            (project_id, entity_id),
        ).fetchone()
        if row is None:
            return None
        return StoredEntity(row[0], bytes(row[1]), bool(row[2]))

    def entities(self, project_id: str, entity_ids: Iterable[str]) -> dict[str, StoredEntity]:
        """The stored entities among ``entity_ids`` (absent ones are left out)."""
        ids = list(entity_ids)
        found: dict[str, StoredEntity] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            part = ids[start : start + _IDS_PER_QUERY]
            rows = self._db.execute(
                "SELECT entity_id, entity_type, document, deleted FROM entities"
                f" WHERE project_id = ? AND entity_id IN ({', '.join('?' * len(part))})",
                (project_id, *part),
            )
            for row in rows:
                found[row[0]] = StoredEntity(row[1], bytes(row[2]), bool(row[3]))
        return found

    def entity_ids(
        self, project_id: str, entity_type: str, *, include_deleted: bool = False
    ) -> list[str]:
        sql = "SELECT entity_id FROM entities WHERE project_id = ? AND entity_type = ?"
        if not include_deleted:
            sql += " AND deleted = 0"
        rows = self._db.execute(sql + " ORDER BY entity_id", (project_id, entity_type))
        return [row[0] for row in rows]

    def entity_count(self, project_id: str) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM entities WHERE project_id = ?", (project_id,)
        ).fetchone()
        count: int = row[0]
        return count

    def save_entity(
        self, project_id: str, entity_id: str, entity_type: str, document: bytes, deleted: bool
    ) -> None:
        self._writing()
        self._db.execute(
            "INSERT INTO entities (project_id, entity_id, entity_type, document, deleted)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (project_id, entity_id) DO UPDATE SET"
            " entity_type = excluded.entity_type, document = excluded.document,"
            " deleted = excluded.deleted",
            (project_id, entity_id, entity_type, document, int(deleted)),
        )

    def delete_entity(self, project_id: str, entity_id: str) -> None:
        self._writing()
        self._db.execute(
            "DELETE FROM entities WHERE project_id = ? AND entity_id = ?", (project_id, entity_id)
        )

    # --- the outbox -----------------------------------------------------------------------

    def add_change(
        self,
        project_id: str,
        entity_type: str,
        entity_id: str,
        change: bytes,
        change_hash: bytes,
        created_at: datetime,
    ) -> int:
        self._writing()
        cursor = self._db.execute(
            "INSERT INTO outbox (project_id, entity_type, entity_id, change, hash, created_at,"
            " state) VALUES (?, ?, ?, ?, ?, ?, 'pending')",
            (project_id, entity_type, entity_id, change, change_hash, created_at.timestamp()),
        )
        row_id = cursor.lastrowid
        assert row_id is not None
        return row_id

    def pending_changes(
        self, project_id: str, entity_id: str | None = None, *, limit: int | None = None
    ) -> list[OutboxEntry]:
        """Pending changes in the order they were made (of one entity, if given)."""
        sql = (
            "SELECT id, project_id, entity_type, entity_id, change, hash, created_at FROM outbox"
            " WHERE project_id = ? AND state = 'pending'"
        )
        args: tuple[object, ...] = (project_id,)
        if entity_id is not None:
            sql += " AND entity_id = ?"
            args += (entity_id,)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        return [
            OutboxEntry(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), _utc(r[6]))
            for r in self._db.execute(sql, args)
        ]

    def pending_count(self, project_id: str | None = None) -> int:
        if project_id is None:
            row = self._db.execute("SELECT count(*) FROM outbox WHERE state = 'pending'")
        else:
            row = self._db.execute(
                "SELECT count(*) FROM outbox WHERE project_id = ? AND state = 'pending'",
                (project_id,),
            )
        count: int = row.fetchone()[0]
        return count

    def rejected_count(self, project_id: str | None = None) -> int:
        if project_id is None:
            row = self._db.execute("SELECT count(*) FROM outbox WHERE state = 'rejected'")
        else:
            row = self._db.execute(
                "SELECT count(*) FROM outbox WHERE project_id = ? AND state = 'rejected'",
                (project_id,),
            )
        count: int = row.fetchone()[0]
        return count

    def oldest_pending_at(self, project_ids: Iterable[str]) -> datetime | None:
        ids = list(project_ids)
        if not ids:
            return None
        marks = ", ".join("?" * len(ids))
        row = self._db.execute(
            f"SELECT min(created_at) FROM outbox WHERE state = 'pending'"
            f" AND project_id IN ({marks})",
            ids,
        ).fetchone()
        return _time(row[0])

    def acknowledge(self, ids: Iterable[int]) -> None:
        """The server logged these changes: they leave the outbox."""
        self._writing()
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def reject(
        self,
        ids: Iterable[int],
        code: str,
        message: str,
        details: Mapping[str, object],
        at: datetime,
    ) -> None:
        """The server refused these changes: keep them, with the reason, never resend them."""
        self._writing()
        text = json.dumps(details, default=str)
        self._db.executemany(
            "UPDATE outbox SET state = 'rejected', code = ?, message = ?, details = ?,"
            " rejected_at = ? WHERE id = ? AND state = 'pending'",
            [(code, message, text, at.timestamp(), i) for i in ids],
        )

    def rejected_changes(self, project_id: str) -> list[RejectedChange]:
        rows = self._db.execute(
            "SELECT id, project_id, entity_type, entity_id, code, message, details, created_at,"
            " rejected_at, hash FROM outbox WHERE project_id = ? AND state = 'rejected'"
            " ORDER BY id",
            (project_id,),
        )
        return [
            RejectedChange(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                json.loads(r[6]),
                _utc(r[7]),
                _utc(r[8]),
                bytes(r[9]),
            )
            for r in rows
        ]

    def dismiss_rejected(self, project_id: str, ids: Iterable[int] | None = None) -> int:
        """Forget rejected changes (all of the project's, or those ids); returns how many."""
        self._writing()
        if ids is None:
            cursor = self._db.execute(
                "DELETE FROM outbox WHERE project_id = ? AND state = 'rejected'", (project_id,)
            )
            return cursor.rowcount
        removed = 0
        for i in ids:
            removed += self._db.execute(
                "DELETE FROM outbox WHERE project_id = ? AND state = 'rejected' AND id = ?",
                (project_id, i),
            ).rowcount
        return removed

    # --- conflicts ------------------------------------------------------------------------

    # --- attachments waiting to upload ------------------------------------------------------

    def add_upload(self, entry: UploadEntry) -> None:
        self._writing()
        self._db.execute(
            "INSERT OR IGNORE INTO uploads (attachment_id, project_id, sha256, size, file_name,"
            " created_at, state) VALUES (?, ?, ?, ?, ?, ?, 'waiting')",
            (entry.attachment_id, entry.project_id, entry.sha256, entry.size, entry.file_name,
             time.time()),
        )  # fmt: skip

    def uploads(self, state: str | None = None) -> list[UploadEntry]:
        rows = self._db.execute(
            "SELECT attachment_id, project_id, sha256, size, file_name, state, code, message"
            " FROM uploads WHERE ? IS NULL OR state = ? ORDER BY created_at",
            (state, state),
        ).fetchall()
        return [UploadEntry(*row) for row in rows]

    def upload(self, attachment_id: str) -> UploadEntry | None:
        row = self._db.execute(
            "SELECT attachment_id, project_id, sha256, size, file_name, state, code, message"
            " FROM uploads WHERE attachment_id = ?",
            (attachment_id,),
        ).fetchone()
        return None if row is None else UploadEntry(*row)

    def set_upload_state(
        self, attachment_id: str, state: str, code: str | None = None, message: str | None = None
    ) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE uploads SET state = ?, code = ?, message = ? WHERE attachment_id = ?",
                (state, code, message, attachment_id),
            )

    def conflicts(self, project_id: str, *, include_resolved: bool = False) -> list[ConflictRecord]:
        sql = "SELECT record FROM conflicts WHERE project_id = ?"
        if not include_resolved:
            sql += " AND status = 'open'"
        rows = self._db.execute(sql + " ORDER BY conflict_id", (project_id,))
        return [record_from_json(r[0]) for r in rows]

    def save_conflicts(
        self, project_id: str, records: Sequence[ConflictRecord], *, replace_all: bool = False
    ) -> list[str]:
        """Store the records (a ``removed`` one deletes its id); ``replace_all``: they are
        the project's whole set. Returns the ids that were removed."""
        self._writing()
        kept, removed = split(records)
        if replace_all:
            known = {
                r[0]
                for r in self._db.execute(
                    "SELECT conflict_id FROM conflicts WHERE project_id = ?", (project_id,)
                )
            }
            removed = sorted(known - {r.conflict_id for r in kept})
            self._db.execute("DELETE FROM conflicts WHERE project_id = ?", (project_id,))
        for conflict_id in removed:
            self._db.execute(
                "DELETE FROM conflicts WHERE project_id = ? AND conflict_id = ?",
                (project_id, conflict_id),
            )
        self._db.executemany(
            "INSERT INTO conflicts (project_id, conflict_id, status, record) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (project_id, conflict_id) DO UPDATE SET"
            " status = excluded.status, record = excluded.record",
            [(project_id, r.conflict_id, r.status, record_to_json(r)) for r in kept],
        )
        return removed


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
