"""The server-managed rows (accounts, users, projects, members) as data, and the rules every
storage applies before writing them: pure, shared by ``store.projects`` (PostgreSQL) and
``store.memory``.

Lists come in creation order, a page at a time: ``after`` is the id of the last row of the
previous page (it must exist), ``limit`` None means every row.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from fieldsync.store.errors import InvalidValue

LEVELS = ("lead", "specialist", "viewer")
"""Permission levels of project members, most powerful first."""

MAX_NAME_LENGTH = 200

# Deliberately loose: one @ with something on both sides and no whitespace.
_EMAIL = re.compile(r"\A[^@\s]+@[^@\s]+\Z")


def valid_name(value: str, what: str) -> str:
    """``value`` stripped, or InvalidValue when it is empty or too long."""
    name = value.strip()
    if not name:
        raise InvalidValue(f"the {what} name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidValue(f"the {what} name is longer than {MAX_NAME_LENGTH} characters")
    return name


def valid_email(email: str | None) -> str | None:
    """The address stripped (None stays None), or InvalidValue when it is not one."""
    if email is None:
        return None
    address = email.strip()
    if not _EMAIL.match(address):
        raise InvalidValue(f"{email!r} is not an email address")
    return address


def check_level(level: str) -> str:
    """``level`` if it is one of :data:`LEVELS`, else InvalidValue."""
    if level not in LEVELS:
        raise InvalidValue(f"unknown level {level!r}: use one of {', '.join(LEVELS)}")
    return level


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise InvalidValue(f"limit must be at least 1, got {limit}")


@dataclass(frozen=True, slots=True)
class AccountRow:
    account_id: uuid.UUID
    name: str
    created_at: datetime
    projects: int
    users: int


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: uuid.UUID
    name: str
    email: str | None
    account_id: uuid.UUID | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ProjectRow:
    project_id: uuid.UUID
    name: str
    account_id: uuid.UUID
    created_at: datetime
    head_seq: int
    members: int


@dataclass(frozen=True, slots=True)
class ProjectDetail:
    """One project, its account's name and how many members it has at each level."""

    project_id: uuid.UUID
    name: str
    account_id: uuid.UUID
    account_name: str
    created_at: datetime
    head_seq: int
    members: Mapping[str, int]  # level: count, every level present


@dataclass(frozen=True, slots=True)
class MemberRow:
    user_id: uuid.UUID
    name: str
    email: str | None
    level: str
    added_at: datetime


Row = AccountRow | UserRow | ProjectRow | ProjectDetail | MemberRow


def row_json(row: Row) -> dict[str, Any]:
    """The row as JSON-ready values (ids and times as strings), for the CLI and the API."""
    document: dict[str, Any] = {}
    for field in fields(row):
        value = getattr(row, field.name)
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Mapping):
            value = dict(value)
        document[field.name] = value
    return document
