"""What the query API answers: items, pages and errors, as msgspec Structs.

These are the one definition of the response shapes: storage builds the items
(``store.ports.QueryPort``), the shell encodes the pages, and the OpenAPI document takes
its schemas from them (``msgspec.json.schema_components``). Times are ISO 8601 instants
with an offset (UTC from storage).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from msgspec import Struct


class _Item(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A row of a read model, as the API shows it."""


class Activity(_Item, frozen=True, kw_only=True):
    """An activity as ``rm_activities`` holds it (``last_seq``: its latest change)."""

    entity_id: str
    plan_id: str
    title: str
    location_id: str | None
    starts_at: datetime
    ends_at: datetime
    status: str
    tasks_total: int
    tasks_done: int
    deleted: bool
    last_seq: int


class Summoning(_Item, frozen=True, kw_only=True):
    """A summoning as ``rm_summonings`` holds it: who (a role, a user) is called in for
    which activity, from when to when."""

    entity_id: str
    activity_id: str
    role_id: str | None
    user_id: str | None
    starts_at: datetime
    ends_at: datetime
    status: str
    last_seq: int


class Conflict(_Item, frozen=True, kw_only=True):
    """A conflict record (``docs/conflicts.md``); ``details`` holds the competing values,
    the changes that produced them and the rule's resolution."""

    conflict_id: str
    kind: str
    entity_ids: list[str]
    fields: list[str]
    details: dict[str, Any]
    status: Literal["open", "resolved"]
    opened_seq: int
    resolved_seq: int | None


class MemberHealth(_Item, frozen=True, kw_only=True):
    """A member and the sync health of their clients: ``connected`` while one of them has
    a live sync connection; the client fields come from the client that said hello last
    (``outbox_age_ms`` as it reported it then); all null when no client ever synced."""

    user_id: str
    display_name: str
    level: Literal["lead", "specialist", "viewer"]
    connected: bool
    last_seen_at: datetime | None
    outbox_age_ms: int | None
    client_id: str | None
    client_version: str | None


class _Page(Struct, frozen=True, kw_only=True):
    """Common to every answer: the rows reflect the project's log up to exactly ``seq``;
    ``next_cursor`` (null on the last page) asks for the page after this one."""

    project_id: str
    seq: int
    next_cursor: str | None


class ActivityPage(_Page, frozen=True, kw_only=True):
    items: list[Activity]


class SummoningPage(_Page, frozen=True, kw_only=True):
    items: list[Summoning]


class ConflictPage(_Page, frozen=True, kw_only=True):
    items: list[Conflict]


class MemberHealthPage(_Page, frozen=True, kw_only=True):
    items: list[MemberHealth]


class BadParameter(Struct, frozen=True, kw_only=True):
    """400: a query parameter is unknown, repeated, malformed or out of range."""

    error: Literal["bad_parameter"] = "bad_parameter"
    parameter: str
    message: str


class ErrorBody(Struct, frozen=True, kw_only=True):
    """401 (``invalid_token``, ``token_expired``), 404 (``project_unavailable``: no such
    project, or not a member, the same answer on purpose) and 503 (``server_unavailable``),
    as the snapshot endpoint answers them."""

    code: str
    message: str
