"""Every exception the SDK raises derives from :class:`FieldsyncError`.

Local mistakes (an edit that does not fit the schema, an unknown entity) raise at once and
store nothing. What the server says about the connection (a refused token, an incompatible
protocol version, a project the user cannot see) is raised by the call that waits for it
and is also kept in :attr:`SyncStatus.last_error`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fieldsync.model.validation import SchemaViolation

__all__ = [
    "AuthError",
    "ClientClosed",
    "ConflictNotResolvable",
    "EntityNotFound",
    "FieldsyncError",
    "IncompatibleServer",
    "MembershipRemoved",
    "Offline",
    "ProjectUnavailable",
    "ServerError",
    "StoreError",
    "StoreLocked",
    "ValidationError",
]


class FieldsyncError(Exception):
    """Base class of the SDK's exceptions."""


class ValidationError(FieldsyncError, ValueError):
    """A local edit does not fit the entity's schema; nothing was stored.

    ``violations`` lists each problem (field path, what was expected, what was given) when
    the edited document was checked; it is empty when the values could not even be written
    (an unknown field, a value of the wrong Python type).
    """

    def __init__(self, message: str, violations: Sequence[SchemaViolation] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations = tuple(violations)


class EntityNotFound(FieldsyncError, LookupError):  # noqa: N818 (a condition, named as such)
    """No entity with this type and id in the local copy of the project."""


class ConflictNotResolvable(FieldsyncError):  # noqa: N818 (a condition, named as such)
    """``resolve_conflict`` cannot settle this conflict by choosing a value."""


class StoreError(FieldsyncError):
    """The local SQLite store cannot be opened or used."""


class StoreLocked(StoreError):  # noqa: N818 (a condition, named as such)
    """Another client (in this or another process) has the same store file open."""


class ClientClosed(FieldsyncError):  # noqa: N818 (a condition, named as such)
    """The client was closed; open a new one."""


class ServerError(FieldsyncError):
    """Something the server reported, with its protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AuthError(ServerError):
    """The token was refused (``invalid_token`` or ``token_expired``).

    Sync stops until the app calls :meth:`FieldsyncClient.set_token` with a new token.
    """


class IncompatibleServer(ServerError):  # noqa: N818 (a condition, named as such)
    """The server speaks no protocol version this SDK speaks (``unsupported_version``).

    Sync stops: update the SDK.
    """


class ProjectUnavailable(ServerError):  # noqa: N818 (a condition, named as such)
    """No such project, or the user is not (or no longer) a member of it."""

    def __init__(self, project_id: str, code: str, message: str) -> None:
        super().__init__(code, message)
        self.project_id = project_id


class MembershipRemoved(ProjectUnavailable):
    """The user was removed from the project while syncing it (``membership_removed``).

    The project stops syncing, and every change still in its outbox is rejected with this
    code (see ``Project.rejected_changes()``): the server will never log them. The local
    copy stays readable.
    """


class Offline(FieldsyncError):  # noqa: N818 (a condition, named as such)
    """The server could not be reached; sync retries by itself."""
