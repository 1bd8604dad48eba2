"""What the app can show about sync: connection, work in progress, the last problem."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from fieldsync_client.errors import FieldsyncError

__all__ = ["ConnectionState", "RemoteChanges", "SyncStatus"]


class ConnectionState(StrEnum):
    CONNECTING = "connecting"  # a connection attempt is under way
    ONLINE = "online"  # connected and welcomed by the server
    OFFLINE = "offline"  # not connected; the next attempt comes after a backoff delay
    STOPPED = "stopped"  # not trying: closed, sync disabled, or stopped by an AuthError or
    # IncompatibleServer (see last_error)


@dataclass(frozen=True, slots=True)
class SyncStatus:
    connection: ConnectionState
    syncing: bool  # online and catching up or pushing
    pending: int  # local changes waiting for the server's acknowledgement
    rejected: int  # local changes the server refused (see Project.rejected_changes())
    last_synced_at: datetime | None  # the last time everything was up to date both ways
    last_error: FieldsyncError | None  # the latest problem, until the next good connection
    # What the server says is wrong on its side (e.g. "database_unavailable": changes stay
    # pending and are sent when it is back), or None.
    server_problem: str | None = None

    @property
    def online(self) -> bool:
        return self.connection is ConnectionState.ONLINE


@dataclass(frozen=True, slots=True)
class RemoteChanges:
    """Entities of a project whose documents changed because of server data.

    ``snapshot`` is true when they came from a (re)bootstrap; ``cursor`` is the project's
    cursor after applying them. The app's own changes coming back are not reported.
    """

    project_id: str
    entity_ids: frozenset[str]
    cursor: int
    snapshot: bool = False
