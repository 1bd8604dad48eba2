"""The query parameters of each endpoint, and turning a URL's query string into them.

Each endpoint's parameters are a msgspec Struct (field name = parameter name, ``from``
spelled ``from_``); its annotations are both what :func:`parse_params` enforces and what the
OpenAPI document says (``query.openapi``). A list-typed field is repeatable
(``?location_id=a&location_id=b``); any other parameter given twice is refused, as is a
parameter the endpoint does not know. Every refusal is a :class:`BadParameterError` naming
the parameter and what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import cache
from types import UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)
from uuid import UUID

import msgspec
from msgspec import Meta, Struct, field

from fieldsync.model.schema import is_valid_entity_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT, description=f"Items per page, 1 to {MAX_LIMIT}.")]
Cursor = Annotated[
    str,
    Meta(
        max_length=1024,
        description="The `next_cursor` of the previous page, with the same other parameters.",
    ),
]
Instant = Annotated[
    datetime,
    Meta(tz=True, description="An ISO 8601 instant with an offset, e.g. 2026-03-02T08:00:00Z."),
]
# The pattern is for the OpenAPI document; ``is_valid_entity_id`` is what decides (a
# JSON Schema ``$`` also matches before a final newline).
EntityId = Annotated[
    str, Meta(pattern="^[A-Za-z0-9_-]{1,64}$", description="An entity id (1-64 of A-Za-z0-9_-).")
]
UserId = Annotated[
    str, Meta(description="A user id (a UUID).", extra_json_schema={"format": "uuid"})
]
SeqAfter = Annotated[int, Meta(ge=0, le=2**63 - 1)]

ActivityStatus = Literal["planned", "confirmed", "in_progress", "done", "cancelled"]
SummoningStatus = Literal["proposed", "confirmed", "declined", "cancelled"]
ConflictStatus = Literal["open", "resolved", "all"]


class BadParameterError(ValueError):
    """A query parameter the endpoint cannot take: answered 400 ``bad_parameter``."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class _Params(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None


class _Windowed(_Params, frozen=True, kw_only=True):
    from_: Instant | None = field(default=None, name="from")
    to: Instant | None = None


class ActivityParams(_Windowed, frozen=True, kw_only=True):
    """Activities at any of the ``location_id``s, of a plan, with a status, in the window
    ``[from, to)`` (an activity is in it when it overlaps it); deleted ones only on request."""

    location_id: list[EntityId] = []
    plan_id: EntityId | None = None
    status: ActivityStatus | None = None
    include_deleted: bool = False


class SummoningParams(_Windowed, frozen=True, kw_only=True):
    """Summonings of a user, a role, an activity, with a status, in the window
    ``[from, to)``; deleted summonings are never listed."""

    user_id: UserId | None = None
    role_id: EntityId | None = None
    activity_id: EntityId | None = None
    status: SummoningStatus | None = None


class ConflictParams(_Params, frozen=True, kw_only=True):
    """Open conflicts (``status=open``, the default), resolved ones, or all; with
    ``resolved_since_seq``, only the resolved ones resolved after that seq (and, with
    ``status=all``, every open one)."""

    status: ConflictStatus = "open"
    resolved_since_seq: SeqAfter | None = None


class MemberParams(_Params, frozen=True, kw_only=True):
    """Every member of the project, with the sync health of their clients."""


P = TypeVar("P", bound=_Params)


@cache
def parameter_fields(params: type[Struct]) -> tuple[msgspec.inspect.Field, ...]:
    """The parameters of a Struct, in declaration order (``encode_name``: as spelled in
    URLs). Cached: a type's fields are read once, not on every request."""
    info = msgspec.inspect.type_info(params)
    assert isinstance(info, msgspec.inspect.StructType)
    return tuple(info.fields)


def is_repeatable(annotation: Any) -> bool:
    return get_origin(_strip(annotation)) is list


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def parse_params(params: type[P], pairs: Iterable[tuple[str, str]]) -> P:
    """The parameters from a query string's ``(name, value)`` pairs, in order."""
    hints = {f.encode_name: f for f in parameter_fields(params)}
    annotations = _annotations(params)
    given: dict[str, Any] = {}
    for name, value in pairs:
        found = hints.get(name)
        if found is None:
            known = ", ".join(sorted(hints))
            raise BadParameterError(name, f"unknown parameter (this endpoint takes: {known})")
        annotation = annotations[found.name]
        if is_repeatable(annotation):
            given.setdefault(name, []).append(value)
        elif name in given:
            raise BadParameterError(name, "given more than once; it takes one value")
        else:
            given[name] = value
    values: dict[str, Any] = {}
    for name, raw in given.items():
        values[hints[name].name] = _convert(name, raw, annotations[hints[name].name])
    parsed = params(**values)
    _check_uuids(parsed)
    return parsed


@cache
def _annotations(params: type[Struct]) -> dict[str, Any]:
    return get_type_hints(params, include_extras=True)


def _convert(name: str, raw: Any, annotation: Any) -> Any:
    if raw == "" and not is_repeatable(annotation):
        raise BadParameterError(name, "is empty: give a value, or leave the parameter out")
    try:
        value = msgspec.convert(raw, annotation, strict=False)
    except msgspec.ValidationError as exc:
        raise BadParameterError(name, _explain(name, raw, annotation, str(exc))) from None
    if "pattern" in repr(annotation):  # an entity id, or a list of them
        for item in value if isinstance(value, list) else [value]:
            if not is_valid_entity_id(item):
                raise BadParameterError(name, _not_an_entity_id(item))
    return value


def _not_an_entity_id(raw: object) -> str:
    return f"{raw!r} is not an entity id (1 to 64 of A-Z a-z 0-9 _ -)"


def _kinds(annotation: Any) -> list[Any]:
    """The types a parameter may hold, without ``Annotated`` wrappers or ``None``."""
    kind = _strip(annotation)
    members = get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)
    return [_strip(m) for m in members if m is not type(None)]


def _explain(name: str, raw: Any, annotation: Any, error: str) -> str:
    """What is wrong, in words a caller can act on."""
    kinds = _kinds(annotation)
    if datetime in kinds:
        return (
            f"{raw!r} is not an ISO 8601 instant with an offset "
            "(such as 2026-03-02T08:00:00Z or 2026-03-02T10:00:00+02:00)"
        )
    if bool in kinds:
        return f"{raw!r} is not a boolean (true or false)"
    literal = next((k for k in kinds if get_origin(k) is Literal), None)
    if literal is not None:
        return f"{raw!r} is not one of: {', '.join(get_args(literal))}"
    if name == "limit":
        return f"{raw!r} is not an integer from 1 to {MAX_LIMIT}"
    if "regex" in error:
        return _not_an_entity_id(raw if isinstance(raw, str) else raw[-1])
    if int in kinds:
        return f"{raw!r} is not an integer from 0 to 2^63-1"
    return f"{raw!r}: {error.split(' - at ')[0]}"


def _check_uuids(parsed: _Params) -> None:
    user_id = getattr(parsed, "user_id", None)
    if user_id is not None:
        canonical_uuid("user_id", user_id)


def canonical_uuid(name: str, value: str) -> str:
    """The UUID's canonical spelling (lowercase, hyphenated), as user ids are stored."""
    try:
        return str(UUID(value))
    except ValueError:
        raise BadParameterError(name, f"{value!r} is not a UUID") from None


def check_window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and not start < end:
        raise BadParameterError("from", "must be before to (the window is [from, to))")
