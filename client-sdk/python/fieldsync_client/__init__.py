"""fieldsync client SDK: an offline-first local copy of fieldsync projects that syncs itself.

    async with FieldsyncClient("https://sync.example.org", token, "fieldsync.db") as client:
        project = await client.open_project(project_id)
        activity_id = await project.create("activity", {...})
        await project.update("activity", activity_id, {"description": "Note: ..."})  # merges

See ``README.md`` for offline behaviour and errors, and :mod:`fieldsync_client.blocking` for
code that is not async.
"""

from fieldsync.model.validation import SchemaViolation
from fieldsync_client.blocking import BlockingClient, BlockingProject
from fieldsync_client.client import FieldsyncClient
from fieldsync_client.conflicts import Conflict, ConflictUpdate
from fieldsync_client.errors import (
    AuthError,
    ClientClosed,
    ConflictNotResolvable,
    EntityNotFound,
    FieldsyncError,
    IncompatibleServer,
    MembershipRemoved,
    Offline,
    ProjectUnavailable,
    ServerError,
    StoreError,
    StoreLocked,
    ValidationError,
)
from fieldsync_client.local_store import RejectedChange
from fieldsync_client.project import Project
from fieldsync_client.status import ConnectionState, RemoteChanges, SyncStatus
from fieldsync_client.version import __version__

__all__ = [
    "AuthError",
    "BlockingClient",
    "BlockingProject",
    "ClientClosed",
    "Conflict",
    "ConflictNotResolvable",
    "ConflictUpdate",
    "ConnectionState",
    "EntityNotFound",
    "FieldsyncClient",
    "FieldsyncError",
    "IncompatibleServer",
    "MembershipRemoved",
    "Offline",
    "Project",
    "ProjectUnavailable",
    "RejectedChange",
    "RemoteChanges",
    "SchemaViolation",
    "ServerError",
    "StoreError",
    "StoreLocked",
    "SyncStatus",
    "ValidationError",
    "__version__",
]
