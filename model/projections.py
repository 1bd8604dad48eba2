"""Read-model rows: each entity type's values mapped to the columns of its ``rm_*`` table.

The store adds ``project_id``, ``entity_id`` and ``last_seq``; everything else in a row comes
from here, so a rebuild from the log and the append path produce identical rows. Rows are
built only from documents that passed validation (``Inspection.violations`` empty).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

Values = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Projection:
    """Where an entity type is projected: ``row(values)`` lines up with ``columns``."""

    table: str
    columns: tuple[str, ...]
    row: Callable[[Values], tuple[object, ...]]


def _str(values: Values, key: str) -> str:
    value = values[key]
    assert isinstance(value, str), key
    return value


def _opt_str(values: Values, key: str) -> str | None:
    return _str(values, key) if values.get(key) is not None else None


def _time(values: Values, key: str) -> datetime:
    value = values[key]
    assert isinstance(value, datetime), key
    return value


def _opt_time(values: Values, key: str) -> datetime | None:
    return _time(values, key) if values.get(key) is not None else None


def _deleted(values: Values) -> bool:
    return values.get("deleted") is True


def _list(values: Values, key: str) -> list[object]:
    value = values.get(key, [])
    assert isinstance(value, list), key
    return value


def _str_list(values: Values, key: str) -> list[str]:
    return [item for item in _list(values, key) if isinstance(item, str)]


def _coordinate(values: Values, key: str) -> float | None:
    coordinates = values.get("coordinates")
    value = coordinates.get(key) if isinstance(coordinates, Mapping) else None
    return float(value) if isinstance(value, int | float) else None


def _done(task: object) -> bool:
    return isinstance(task, Mapping) and task.get("done") is True


def _project_settings(v: Values) -> tuple[object, ...]:
    return (_str(v, "name"), _opt_str(v, "timezone"), _deleted(v))


def _plan(v: Values) -> tuple[object, ...]:
    return (_str(v, "name"), _opt_time(v, "starts_at"), _opt_time(v, "ends_at"), _deleted(v))


def _activity(v: Values) -> tuple[object, ...]:
    tasks = _list(v, "tasks")
    return (
        _str(v, "plan_id"),
        _str(v, "title"),
        _opt_str(v, "location_id"),
        _time(v, "starts_at"),
        _time(v, "ends_at"),
        _str(v, "status"),
        len(tasks),
        sum(1 for task in tasks if _done(task)),
        _deleted(v),
        _str_list(v, "attachments"),
    )


def _location(v: Values) -> tuple[object, ...]:
    return (
        _str(v, "name"),
        _opt_str(v, "address"),
        _coordinate(v, "latitude"),
        _coordinate(v, "longitude"),
        _deleted(v),
        _str_list(v, "attachments"),
    )


def _role(v: Values) -> tuple[object, ...]:
    return (_str(v, "name"), _str_list(v, "skills"), _deleted(v))


def _summoning(v: Values) -> tuple[object, ...]:
    return (
        _str(v, "activity_id"),
        _opt_str(v, "role_id"),
        _opt_str(v, "user_id"),
        _time(v, "starts_at"),
        _time(v, "ends_at"),
        _str(v, "status"),
        _deleted(v),
    )


def _membership(v: Values) -> tuple[object, ...]:
    return (_str(v, "user_id"), _str_list(v, "role_ids"), _opt_str(v, "display_name"), _deleted(v))


def _attachment(v: Values) -> tuple[object, ...]:
    size = v["size"]
    assert isinstance(size, int), "size"
    return (
        _str(v, "sha256"),
        size,
        _str(v, "content_type"),
        _str(v, "status"),
        _opt_str(v, "uploaded_by"),
        _deleted(v),
    )


PROJECTIONS: Mapping[str, Projection] = MappingProxyType(
    {
        "project_settings": Projection(
            "rm_project_settings", ("name", "timezone", "deleted"), _project_settings
        ),
        "plan": Projection("rm_plans", ("name", "starts_at", "ends_at", "deleted"), _plan),
        "activity": Projection(
            "rm_activities",
            (
                "plan_id",
                "title",
                "location_id",
                "starts_at",
                "ends_at",
                "status",
                "tasks_total",
                "tasks_done",
                "deleted",
                "attachments",
            ),
            _activity,
        ),
        "location": Projection(
            "rm_locations",
            ("name", "address", "latitude", "longitude", "deleted", "attachments"),
            _location,
        ),
        "role": Projection("rm_roles", ("name", "skills", "deleted"), _role),
        "summoning": Projection(
            "rm_summonings",
            ("activity_id", "role_id", "user_id", "starts_at", "ends_at", "status", "deleted"),
            _summoning,
        ),
        "membership": Projection(
            "rm_memberships", ("user_id", "role_ids", "display_name", "deleted"), _membership
        ),
        "attachment": Projection(
            "rm_attachments",
            ("sha256", "size", "content_type", "status", "uploaded_by", "deleted"),
            _attachment,
        ),
    }
)
