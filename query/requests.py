"""From a request's query string to what storage is asked, and from storage's page to the
answer: one pair of functions per endpoint, pure.

Each ``*_query`` parses the parameters (``query.params``), checks what involves several of
them (the window, ``resolved_since_seq`` against ``status``) and reads the cursor, which
must belong to the same endpoint, project and filters (``query.cursor``). Each ``*_page``
makes the response, with the cursor of the next page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec

from fieldsync.query.cursor import decode_cursor, encode_cursor
from fieldsync.query.items import (
    Activity,
    ActivityPage,
    Conflict,
    ConflictPage,
    MemberHealth,
    MemberHealthPage,
    Summoning,
    SummoningPage,
)
from fieldsync.query.params import (
    ActivityParams,
    BadParameterError,
    ConflictParams,
    MemberParams,
    SummoningParams,
    canonical_uuid,
    check_window,
    parse_params,
)
from fieldsync.query.specs import (
    ActivityQuery,
    ConflictKey,
    ConflictQuery,
    MemberKey,
    MemberQuery,
    Page,
    SummoningQuery,
    TimedKey,
)

Pairs = Iterable[tuple[str, str]]
T = TypeVar("T")
A = TypeVar("A", bound=msgspec.Struct)

CONFLICT_STATUSES = {"open": ("open",), "resolved": ("resolved",), "all": ("open", "resolved")}


def _scope(endpoint: str, project_id: UUID, filters: Sequence[Any]) -> bytes:
    """What a cursor is bound to: everything about the query but the cursor and limit."""
    return msgspec.json.encode([endpoint, str(project_id), *filters])


def _after(scope: bytes, cursor: str | None, key_type: Any) -> Any:
    """The previous page's last key (``key_type``: a tuple type alias), or None."""
    return None if cursor is None else decode_cursor(scope, cursor, key_type)


def _answer(
    answer: Callable[..., A],
    project_id: UUID,
    scope: bytes,
    page: Page[T],
    key_of: Callable[[T], tuple[Any, ...]],
) -> A:
    """The response for ``page``; its next cursor holds the last item's sort key."""
    more = page.more and bool(page.items)
    return answer(
        project_id=str(project_id),
        seq=page.seq,
        items=page.items,
        next_cursor=encode_cursor(scope, key_of(page.items[-1])) if more else None,
    )


# --- activities -------------------------------------------------------------------------


def activity_query(project_id: UUID, pairs: Pairs) -> tuple[ActivityQuery, bytes]:
    p = parse_params(ActivityParams, pairs)
    check_window(p.from_, p.to)
    locations = tuple(sorted(set(p.location_id)))
    scope = _scope(
        "activities",
        project_id,
        [locations, p.plan_id, p.status, _iso(p.from_), _iso(p.to), p.include_deleted],
    )
    query = ActivityQuery(
        locations,
        p.plan_id,
        p.status,
        p.from_,
        p.to,
        p.include_deleted,
        _after(scope, p.cursor, TimedKey),
        p.limit,
    )
    return query, scope


def activity_page(project_id: UUID, scope: bytes, page: Page[Activity]) -> ActivityPage:
    return _answer(ActivityPage, project_id, scope, page, lambda a: (a.starts_at, a.entity_id))


# --- summonings -------------------------------------------------------------------------


def summoning_query(project_id: UUID, pairs: Pairs) -> tuple[SummoningQuery, bytes]:
    p = parse_params(SummoningParams, pairs)
    check_window(p.from_, p.to)
    user_id = None if p.user_id is None else canonical_uuid("user_id", p.user_id)
    scope = _scope(
        "summonings",
        project_id,
        [user_id, p.role_id, p.activity_id, p.status, _iso(p.from_), _iso(p.to)],
    )
    query = SummoningQuery(
        user_id,
        p.role_id,
        p.activity_id,
        p.status,
        p.from_,
        p.to,
        _after(scope, p.cursor, TimedKey),
        p.limit,
    )
    return query, scope


def summoning_page(project_id: UUID, scope: bytes, page: Page[Summoning]) -> SummoningPage:
    return _answer(SummoningPage, project_id, scope, page, lambda s: (s.starts_at, s.entity_id))


# --- conflicts --------------------------------------------------------------------------


def conflict_query(project_id: UUID, pairs: Pairs) -> tuple[ConflictQuery, bytes]:
    p = parse_params(ConflictParams, pairs)
    if p.resolved_since_seq is not None and p.status == "open":
        raise BadParameterError(
            "resolved_since_seq", "applies to resolved conflicts: add status=resolved or all"
        )
    scope = _scope("conflicts", project_id, [p.status, p.resolved_since_seq])
    query = ConflictQuery(
        CONFLICT_STATUSES[p.status],
        p.resolved_since_seq,
        _after(scope, p.cursor, ConflictKey),
        p.limit,
    )
    return query, scope


def conflict_page(project_id: UUID, scope: bytes, page: Page[Conflict]) -> ConflictPage:
    return _answer(ConflictPage, project_id, scope, page, lambda c: (c.opened_seq, c.conflict_id))


# --- members ----------------------------------------------------------------------------


def member_query(project_id: UUID, pairs: Pairs, live_since: datetime) -> tuple[MemberQuery, bytes]:
    p = parse_params(MemberParams, pairs)
    scope = _scope("members_health", project_id, [])
    return MemberQuery(live_since, _after(scope, p.cursor, MemberKey), p.limit), scope


def member_page(project_id: UUID, scope: bytes, page: Page[MemberHealth]) -> MemberHealthPage:
    return _answer(MemberHealthPage, project_id, scope, page, lambda m: (m.user_id,))


def _iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.astimezone(UTC).isoformat()
