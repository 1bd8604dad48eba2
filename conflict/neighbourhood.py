"""Which committed rows the store must read before re-checking the cross-entity rules.

The rules need a neighbourhood of each changed entity (``conflict.cross.needed_rows`` says
exactly which rows). The store cannot read the whole project for every push, so it reads by
key: rows by id, summonings by activity, role or user, activities by location. What to read
depends on what has been read (a summoning's user leads to that user's other summonings,
which lead to their activities), so the store repeats :func:`lookups_for` until it asks for
nothing new; three rounds at most. Reading more than needed is harmless: the rules only
report conflicts naming the changed entities, and every row read is a real row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from fieldsync.conflict.cross import ActivityRow, LocationRow, RoleRow, Row, SummoningRow

__all__ = ["Lookups", "lookups_for"]


@dataclass(frozen=True, slots=True)
class Lookups:
    """Keys to read committed rows by; each set is one kind of index lookup."""

    ids: frozenset[str] = frozenset()
    summonings_by_activity: frozenset[str] = frozenset()
    summonings_by_role: frozenset[str] = frozenset()
    summonings_by_user: frozenset[str] = frozenset()
    activities_by_location: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def __or__(self, other: Lookups) -> Lookups:
        return Lookups(*(getattr(self, f.name) | getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Lookups) -> Lookups:
        return Lookups(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


def lookups_for(centres: Iterable[str], known: Iterable[Row]) -> Lookups:
    """What to read so that every row ``needed_rows(project, centres)`` uses is known.

    ``known`` holds every row known so far, several versions of one entity included (the
    rows a push's entity takes one after the other): a key any version needs is read.
    """
    wanted = set(centres)
    rows = list(known)
    ids: set[str] = set(wanted)
    by_activity: set[str] = set()
    by_role: set[str] = set()
    by_user: set[str] = set()
    by_location: set[str] = set()
    for row in rows:
        central = row.entity_id in wanted
        if isinstance(row, ActivityRow) and central:
            by_activity.add(row.entity_id)
            if row.location_id is not None:
                ids.add(row.location_id)
        elif isinstance(row, SummoningRow):
            ids.add(row.activity_id)  # every summoning in the neighbourhood brings its activity
            if central and row.role_id is not None:
                ids.add(row.role_id)
            if (central or row.activity_id in wanted) and row.user_id is not None:
                by_user.add(row.user_id)
        elif isinstance(row, LocationRow) and central:
            by_location.add(row.entity_id)
        elif isinstance(row, RoleRow) and central:
            by_role.add(row.entity_id)
    return Lookups(
        frozenset(ids),
        frozenset(by_activity),
        frozenset(by_role),
        frozenset(by_user),
        frozenset(by_location),
    )
