"""Cross-entity rules: conflicts between entities, computed from read-model rows.

Entities have no causal order between them (each is its own Automerge document), so these
rules look at state only: given the rows of the entities related to what changed, which
conflicts exist now. A conflict found earlier is still open exactly when the same rule finds
it again (:func:`still_open`); the store closes it when an ordinary change removes the cause.

The ids of these conflicts name the kind, the entities and the fields, not the changes: a
double booking stays the same conflict while both summonings still overlap, even if one of
them moves a little, and it is the same conflict again if it comes back later.

Summonings that are declined or cancelled, and activities that are cancelled, book nobody:
they take part in no double booking and cannot lie outside their activity. A window whose
end is not after its start overlaps nothing (``broken_interval`` reports it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations

from fieldsync.conflict.records import Conflict, ConflictKind, make_conflict

__all__ = [
    "ActivityRow",
    "LocationRow",
    "ProjectRows",
    "RoleRow",
    "RowIndex",
    "SummoningRow",
    "cross_entity_conflicts",
    "needed_rows",
    "row_from_values",
    "still_open",
]

INACTIVE_SUMMONING = frozenset({"declined", "cancelled"})
INACTIVE_ACTIVITY = frozenset({"cancelled"})

DELETED_REFERENCE_RESOLUTION = (
    "both are kept: the reference stays and the target stays deleted (deletes are soft); a "
    "lead points the reference elsewhere, restores the target or deletes the referring entity"
)


@dataclass(frozen=True, slots=True)
class ActivityRow:
    entity_id: str
    location_id: str | None
    starts_at: datetime
    ends_at: datetime
    deleted: bool = False
    status: str = "planned"


@dataclass(frozen=True, slots=True)
class SummoningRow:
    entity_id: str
    activity_id: str
    role_id: str | None
    user_id: str | None
    starts_at: datetime
    ends_at: datetime
    deleted: bool = False
    status: str = "proposed"


@dataclass(frozen=True, slots=True)
class LocationRow:
    entity_id: str
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class RoleRow:
    entity_id: str
    deleted: bool = False


Row = ActivityRow | SummoningRow | LocationRow | RoleRow


@dataclass(frozen=True, slots=True)
class ProjectRows:
    """The rows the rules look at, by entity id (a subset of a project is fine)."""

    activities: Mapping[str, ActivityRow] = field(default_factory=dict)
    summonings: Mapping[str, SummoningRow] = field(default_factory=dict)
    locations: Mapping[str, LocationRow] = field(default_factory=dict)
    roles: Mapping[str, RoleRow] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[Row]) -> ProjectRows:
        activities: dict[str, ActivityRow] = {}
        summonings: dict[str, SummoningRow] = {}
        locations: dict[str, LocationRow] = {}
        roles: dict[str, RoleRow] = {}
        for row in rows:
            if isinstance(row, ActivityRow):
                activities[row.entity_id] = row
            elif isinstance(row, SummoningRow):
                summonings[row.entity_id] = row
            elif isinstance(row, LocationRow):
                locations[row.entity_id] = row
            else:
                roles[row.entity_id] = row
        return cls(activities, summonings, locations, roles)

    def rows(self) -> list[Row]:
        return [
            *self.activities.values(),
            *self.summonings.values(),
            *self.locations.values(),
            *self.roles.values(),
        ]


def row_from_values(entity_type: str, entity_id: str, values: Mapping[str, object]) -> Row | None:
    """The row the rules need, from a validated document's values (``Merged.values``).

    None for entity types no cross-entity rule looks at.
    """
    deleted = values.get("deleted") is True
    if entity_type == "activity":
        return ActivityRow(
            entity_id,
            _opt_str(values.get("location_id")),
            _time(values["starts_at"]),
            _time(values["ends_at"]),
            deleted,
            str(values.get("status", "planned")),
        )
    if entity_type == "summoning":
        return SummoningRow(
            entity_id,
            str(values["activity_id"]),
            _opt_str(values.get("role_id")),
            _opt_str(values.get("user_id")),
            _time(values["starts_at"]),
            _time(values["ends_at"]),
            deleted,
            str(values.get("status", "proposed")),
        )
    if entity_type == "location":
        return LocationRow(entity_id, deleted)
    if entity_type == "role":
        return RoleRow(entity_id, deleted)
    return None


def cross_entity_conflicts(
    rows: ProjectRows, involving: Iterable[str] | None = None
) -> tuple[Conflict, ...]:
    """Every cross-entity conflict among ``rows`` (only those naming one of ``involving``)."""
    wanted = None if involving is None else set(involving)
    found: dict[str, Conflict] = {}
    for conflict in (
        *_deleted_references(rows),
        *_double_bookings(rows),
        *_outside_activity(rows),
    ):
        if wanted is None or wanted.intersection(conflict.entity_ids):
            found[conflict.conflict_id] = conflict
    return tuple(found[key] for key in sorted(found))


def needed_rows(rows: ProjectRows, entity_ids: Iterable[str]) -> ProjectRows:
    """The rows the rules need to find every conflict naming one of ``entity_ids``.

    ``cross_entity_conflicts(needed_rows(all, ids), ids) == cross_entity_conflicts(all, ids)``.
    This is the specification of the store's neighbourhood queries (see docs/conflicts.md):

    * an activity: itself, its location, its summonings, and every summoning of their users
      with those summonings' activities;
    * a summoning: itself, its activity and role, every summoning of its user with their
      activities;
    * a location: itself and the activities at it;
    * a role: itself and the summonings for it.
    """
    index = RowIndex()
    for row in rows.rows():
        index.put(row)
    return index.needed(entity_ids)


class RowIndex:
    """Rows indexed the way :func:`needed_rows` looks them up, updated on every :meth:`put`.

    A rebuild re-checks the rules at every row change of a whole project's log; keeping one
    index and updating it makes each re-check cost the neighbourhood, not the project.
    """

    def __init__(self) -> None:
        self.activities: dict[str, ActivityRow] = {}
        self.summonings: dict[str, SummoningRow] = {}
        self.locations: dict[str, LocationRow] = {}
        self.roles: dict[str, RoleRow] = {}
        self._by_activity: dict[str, set[str]] = defaultdict(set)
        self._by_user: dict[str, set[str]] = defaultdict(set)
        self._by_role: dict[str, set[str]] = defaultdict(set)
        self._by_location: dict[str, set[str]] = defaultdict(set)

    def put(self, row: Row) -> None:
        """Insert or replace the row of ``row.entity_id``."""
        key = row.entity_id
        if isinstance(row, ActivityRow):
            old_activity = self.activities.get(key)
            if old_activity is not None and old_activity.location_id is not None:
                self._by_location[old_activity.location_id].discard(key)
            self.activities[key] = row
            if row.location_id is not None:
                self._by_location[row.location_id].add(key)
        elif isinstance(row, SummoningRow):
            old = self.summonings.get(key)
            if old is not None:
                self._by_activity[old.activity_id].discard(key)
                if old.user_id is not None:
                    self._by_user[old.user_id].discard(key)
                if old.role_id is not None:
                    self._by_role[old.role_id].discard(key)
            self.summonings[key] = row
            self._by_activity[row.activity_id].add(key)
            if row.user_id is not None:
                self._by_user[row.user_id].add(key)
            if row.role_id is not None:
                self._by_role[row.role_id].add(key)
        elif isinstance(row, LocationRow):
            self.locations[key] = row
        else:
            self.roles[key] = row

    def needed(self, entity_ids: Iterable[str]) -> ProjectRows:
        """``needed_rows(all rows, entity_ids)``, by index."""
        activities: dict[str, ActivityRow] = {}
        summonings: dict[str, SummoningRow] = {}
        locations: dict[str, LocationRow] = {}
        roles: dict[str, RoleRow] = {}
        users: set[str] = set()

        def add_summoning(row: SummoningRow) -> None:
            summonings[row.entity_id] = row
            if row.user_id is not None:
                users.add(row.user_id)

        for entity_id in entity_ids:
            if (activity := self.activities.get(entity_id)) is not None:
                activities[entity_id] = activity
                if (location := self.locations.get(activity.location_id or "")) is not None:
                    locations[location.entity_id] = location
                for key in self._by_activity.get(entity_id, ()):
                    add_summoning(self.summonings[key])
            if (summoning := self.summonings.get(entity_id)) is not None:
                add_summoning(summoning)
                if (role := self.roles.get(summoning.role_id or "")) is not None:
                    roles[role.entity_id] = role
            if (location := self.locations.get(entity_id)) is not None:
                locations[entity_id] = location
                for key in self._by_location.get(entity_id, ()):
                    activities[key] = self.activities[key]
            if (role := self.roles.get(entity_id)) is not None:
                roles[entity_id] = role
                for key in self._by_role.get(entity_id, ()):
                    summonings[key] = self.summonings[key]
        for user in users:
            for key in self._by_user.get(user, ()):
                summonings[key] = self.summonings[key]
        for row in list(summonings.values()):
            if (found := self.activities.get(row.activity_id)) is not None:
                activities[found.entity_id] = found
        return ProjectRows(activities, summonings, locations, roles)


def still_open(conflict: Conflict, rows: ProjectRows) -> bool:
    """Whether the rule that found ``conflict`` still finds it among ``rows``."""
    current = cross_entity_conflicts(rows, conflict.entity_ids)
    return any(c.conflict_id == conflict.conflict_id for c in current)


def _deleted_references(rows: ProjectRows) -> list[Conflict]:
    out: list[Conflict] = []
    for activity in rows.activities.values():
        location = rows.locations.get(activity.location_id or "")
        if not activity.deleted and location is not None and location.deleted:
            out.append(_reference(activity.entity_id, "activity", "location_id", location))
    for summoning in rows.summonings.values():
        if summoning.deleted:
            continue
        target = rows.activities.get(summoning.activity_id)
        if target is not None and target.deleted:
            out.append(_reference(summoning.entity_id, "summoning", "activity_id", target))
        role = rows.roles.get(summoning.role_id or "")
        if role is not None and role.deleted:
            out.append(_reference(summoning.entity_id, "summoning", "role_id", role))
    return out


def _reference(source: str, source_type: str, field_name: str, target: Row) -> Conflict:
    target_type = {ActivityRow: "activity", LocationRow: "location", RoleRow: "role"}
    return make_conflict(
        ConflictKind.DELETED_REFERENCE,
        [source, target.entity_id],
        [field_name],
        {
            "source": {"entity_id": source, "entity_type": source_type},
            "field": field_name,
            "target": {
                "entity_id": target.entity_id,
                "entity_type": target_type[type(target)],
                "deleted": True,
            },
        },
        (),
        DELETED_REFERENCE_RESOLUTION,
    )


def _books(summoning: SummoningRow, activity: ActivityRow | None) -> bool:
    return (
        activity is not None
        and not summoning.deleted
        and summoning.status not in INACTIVE_SUMMONING
        and not activity.deleted
        and activity.status not in INACTIVE_ACTIVITY
        and summoning.starts_at < summoning.ends_at
    )


def _double_bookings(rows: ProjectRows) -> list[Conflict]:
    by_user: dict[str, list[tuple[SummoningRow, ActivityRow]]] = defaultdict(list)
    for summoning in rows.summonings.values():
        activity = rows.activities.get(summoning.activity_id)
        if summoning.user_id is not None and activity is not None and _books(summoning, activity):
            by_user[summoning.user_id].append((summoning, activity))
    out: list[Conflict] = []
    for user_id, booked in by_user.items():
        booked.sort(key=lambda item: item[0].entity_id)
        for (first, first_at), (second, second_at) in combinations(booked, 2):
            places = first_at.location_id, second_at.location_id
            if None in places or places[0] == places[1]:
                continue
            if not _overlap(first.starts_at, first.ends_at, second.starts_at, second.ends_at):
                continue
            out.append(
                make_conflict(
                    ConflictKind.DOUBLE_BOOKING,
                    [first.entity_id, second.entity_id, first_at.entity_id, second_at.entity_id],
                    ["user_id", "starts_at", "ends_at", "location_id"],
                    {
                        "user_id": user_id,
                        "summonings": [
                            _booking(first, first_at),
                            _booking(second, second_at),
                        ],
                    },
                )
            )
    return out


def _booking(summoning: SummoningRow, activity: ActivityRow) -> dict[str, object]:
    return {
        "summoning_id": summoning.entity_id,
        "activity_id": activity.entity_id,
        "location_id": activity.location_id,
        "starts_at": summoning.starts_at,
        "ends_at": summoning.ends_at,
    }


def _outside_activity(rows: ProjectRows) -> list[Conflict]:
    out: list[Conflict] = []
    for summoning in rows.summonings.values():
        activity = rows.activities.get(summoning.activity_id)
        if activity is None or not _books(summoning, activity):
            continue
        if activity.starts_at >= activity.ends_at:
            continue
        if _overlap(summoning.starts_at, summoning.ends_at, activity.starts_at, activity.ends_at):
            continue
        out.append(
            make_conflict(
                ConflictKind.SUMMONING_OUTSIDE_ACTIVITY,
                [summoning.entity_id, activity.entity_id],
                ["starts_at", "ends_at"],
                {
                    "summoning": {
                        "entity_id": summoning.entity_id,
                        "starts_at": summoning.starts_at,
                        "ends_at": summoning.ends_at,
                    },
                    "activity": {
                        "entity_id": activity.entity_id,
                        "starts_at": activity.starts_at,
                        "ends_at": activity.ends_at,
                    },
                },
            )
        )
    return out


def _overlap(a_start: datetime, a_end: datetime, b_start: datetime, b_end: datetime) -> bool:
    return a_start < b_end and b_start < a_end


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _time(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    return value
