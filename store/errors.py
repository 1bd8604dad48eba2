"""The storage exception tree: database failures become these types at the storage edge.

Callers above the store catch these, never asyncpg's own errors (``store.driver`` is where
the driver's errors are turned into them)::

    StoreError                  any storage failure
    ├── DatabaseUnavailable     cannot connect, the connection was lost, the server is shutting
    │                           down, restarting or out of resources: a retry later may succeed
    ├── DatabaseFailed          the database refused a statement (a bug or damaged data)
    ├── SchemaTooNew            the database was migrated by newer code than this
    ├── SchemaOutdated          the database lacks migrations this code needs
    ├── UnknownProject          no such project (or it has no change log)
    ├── BatchTooLarge           a push names more entities than the limit allows
    └── AdminError              an account, user, project or membership request that
        │                       cannot be done as asked (nothing was written)
        ├── UnknownAccount
        ├── UnknownUser
        ├── DuplicateEmail
        ├── NotAMember
        └── InvalidValue        a name, email, level or page size that is not acceptable

Every storage implementation (``store.postgres``, ``store.memory``) raises these and only
these; ``store.ports`` names which operation raises which.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from uuid import UUID


class StoreError(Exception):
    """Base of every storage error."""


class DatabaseUnavailable(StoreError):  # noqa: N818 (names read as states)
    """The database cannot be reached, started or used right now; the message says which
    and why. Whatever was under way when it failed may or may not have committed."""


class DatabaseFailed(StoreError):  # noqa: N818 (names read as states)
    """The database refused a statement for a reason a retry will not change: a bug in
    this code, a schema that does not match it, or damaged data."""


class SchemaTooNew(StoreError):  # noqa: N818 (names read as states)
    """Refuse to run old code on a newer schema: it could misread or corrupt the data."""

    def __init__(self, code_version: int, database_version: int) -> None:
        self.code_version = code_version
        self.database_version = database_version
        super().__init__(
            f"database schema is at version {database_version}, but this fieldsync only knows "
            f"migrations up to {code_version}: upgrade fieldsync"
        )


class SchemaOutdated(StoreError):  # noqa: N818 (names read as states)
    """The database needs migrations this code expects; run ``fieldsync migrate``."""

    def __init__(self, pending: Sequence[int]) -> None:
        self.pending = tuple(pending)
        listed = ", ".join(str(version) for version in self.pending)
        super().__init__(
            f"database schema lacks migrations {listed}: run `fieldsync migrate` first"
        )


class UnknownProject(StoreError):  # noqa: N818 (names read as states)
    """The project does not exist on this server."""

    def __init__(self, project_id: UUID) -> None:
        self.project_id = project_id
        super().__init__(f"unknown project {project_id}")


class BatchTooLarge(StoreError):  # noqa: N818 (names read as states)
    """A push names more entities than one transaction may take."""

    def __init__(self, entities: int, limit: int) -> None:
        self.entities = entities
        self.limit = limit
        super().__init__(f"a push of {entities} entities exceeds the limit of {limit}")


class AdminError(StoreError):
    """An account, user, project or membership request that cannot be done as asked."""


class UnknownAccount(AdminError):  # noqa: N818 (names read as states)
    def __init__(self, account_id: uuid.UUID) -> None:
        self.account_id = account_id
        super().__init__(f"unknown account {account_id}")


class UnknownUser(AdminError):  # noqa: N818 (names read as states)
    def __init__(self, user_id: uuid.UUID) -> None:
        self.user_id = user_id
        super().__init__(f"unknown user {user_id}")


class DuplicateEmail(AdminError):  # noqa: N818 (names read as states)
    def __init__(self, email: str) -> None:
        self.email = email
        super().__init__(f"a user with email {email} already exists")


class NotAMember(AdminError):  # noqa: N818 (names read as states)
    def __init__(self, project_id: uuid.UUID, user_id: uuid.UUID) -> None:
        self.project_id = project_id
        self.user_id = user_id
        super().__init__(f"user {user_id} is not a member of project {project_id}")


class InvalidValue(AdminError):  # noqa: N818 (names read as states)
    """A name, email or level that is not acceptable; nothing was written."""
