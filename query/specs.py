"""What storage is asked (``store.ports.QueryPort``): one record per endpoint, its filters
already checked, and a page of what it answers.

``after`` is the sort key of the last item of the previous page (None: the first page);
``limit`` the page size. Storage answers at most ``limit`` items and says whether more
follow, with the seq of the project's log its rows reflect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from fieldsync.query.params import DEFAULT_LIMIT

T = TypeVar("T")

TimedKey = tuple[datetime, str]
"""Activities and summonings sort by ``(starts_at, entity_id)``."""

ConflictKey = tuple[int, str]
"""Conflicts sort by ``(opened_seq, conflict_id)``."""

MemberKey = tuple[str]
"""Members sort by user id (the UUID's lowercase spelling, which sorts as the UUID does)."""


@dataclass(frozen=True, slots=True)
class ActivityQuery:
    location_ids: tuple[str, ...] = ()
    plan_id: str | None = None
    status: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    include_deleted: bool = False
    after: TimedKey | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class SummoningQuery:
    """Deleted summonings are never listed."""

    user_id: str | None = None
    role_id: str | None = None
    activity_id: str | None = None
    status: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    after: TimedKey | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class ConflictQuery:
    """``statuses``: which records; ``resolved_after``: resolved ones only when resolved
    at a seq above it (open ones are not affected)."""

    statuses: tuple[str, ...] = ("open",)
    resolved_after: int | None = None
    after: ConflictKey | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class MemberQuery:
    """``live_since``: a client counts as connected when its session is open and was last
    seen at or after this instant (a process that died cannot say its sessions ended)."""

    live_since: datetime
    after: MemberKey | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """Items in sort order, as of the log's ``seq``; ``more``: items follow the last."""

    seq: int
    items: list[T]
    more: bool
