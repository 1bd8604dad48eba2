"""Who may write what: the project's write rules as data, and one pure function applying them.

The rules are checked on the *merged* change set, under the project's lock: the store hands
over the entity's values before the push (None for a new entity) and after the merge, and
:func:`check_write` compares them field by field. So what counts is the effect of the
changes, not how a client built them: a specialist's change that moves an activity's start
is refused whether it came alone or hidden in a batch of harmless edits.

The levels (see ``docs/security.md`` for why each rule is what it is):

- **lead**: creates, edits and deletes every entity type.
- **specialist**: creates and deletes nothing. Edits the activities they are summoned to (a
  non-deleted summoning names their user id for that activity), every field but
  ``plan_id`` (which plan an activity belongs to is the lead's structure); edits their own
  summonings (``user_id`` is theirs), but only ``status`` (confirm or decline: who is
  called in, for what and when, is the lead's summoning plan). Reads everything else.
- **viewer**: writes nothing (refused as a whole before the store is asked).
- **server-authored types** (``attachment``): nobody writes them; the server appends their
  changes itself (``store.append_plan.refuse_server_authored`` refuses a member's push of one).

Deleting is setting ``deleted`` (deletes are soft); changing ``deleted`` either way needs the
delete right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from automerge.core import Document

from fieldsync.model.entities import SCHEMAS, SERVER_AUTHORED
from fieldsync.model.rejections import RejectCode, Rejection
from fieldsync.model.validation import inspect_document

DELETED = "deleted"


class Level(StrEnum):
    LEAD = "lead"
    SPECIALIST = "specialist"
    VIEWER = "viewer"


WRITE_LEVELS = frozenset({Level.LEAD, Level.SPECIALIST})
"""Levels that may push at all; a viewer's push is refused whole with ``forbidden``."""


class Scope(StrEnum):
    """Which entities of a type a rule's edits reach."""

    ANY = "any"
    SUMMONED_ACTIVITY = "summoned_activity"  # activities the user is summoned to
    OWN_SUMMONING = "own_summoning"  # summonings whose user_id is the user


ALL_FIELDS: frozenset[str] = frozenset({"*"})


@dataclass(frozen=True, slots=True)
class EntityRule:
    """What one level may do with one entity type."""

    create: bool = False
    delete: bool = False
    edit: frozenset[str] = frozenset()  # field names, or ALL_FIELDS
    scope: Scope = Scope.ANY

    def may_edit(self, name: str) -> bool:
        return self.edit == ALL_FIELDS or name in self.edit


_EVERYTHING = EntityRule(create=True, delete=True, edit=ALL_FIELDS)
_NOTHING = EntityRule()

_CLIENT_TYPES = [t for t in SCHEMAS if t not in SERVER_AUTHORED]

RULES: Mapping[Level, Mapping[str, EntityRule]] = {
    Level.LEAD: {
        **{entity_type: _NOTHING for entity_type in SCHEMAS},
        **{entity_type: _EVERYTHING for entity_type in _CLIENT_TYPES},
    },
    Level.SPECIALIST: {
        **{entity_type: _NOTHING for entity_type in SCHEMAS},
        "activity": EntityRule(
            edit=frozenset(
                {
                    "title",
                    "description",
                    "tasks",
                    "location_id",
                    "starts_at",
                    "ends_at",
                    "status",
                    "attachments",
                }
            ),
            scope=Scope.SUMMONED_ACTIVITY,
        ),
        "summoning": EntityRule(edit=frozenset({"status"}), scope=Scope.OWN_SUMMONING),
    },
    Level.VIEWER: {entity_type: _NOTHING for entity_type in SCHEMAS},
}
"""The write rules, per level and entity type: the one place they are defined."""


@dataclass(frozen=True, slots=True)
class Writer:
    """Who is writing, with what the specialist rules need to know about them."""

    user_id: str
    level: Level
    summoned_to: frozenset[str] = field(default_factory=frozenset)
    """Ids of the activities a non-deleted summoning names this user for."""


@dataclass(frozen=True, slots=True)
class WriteCheck:
    """One entity's merged change set: its values before (None if new) and after."""

    entity_type: str
    entity_id: str
    before: Mapping[str, object] | None
    after: Mapping[str, object]


def may_write_everything(level: Level) -> bool:
    """Whether the rules let ``level`` create, edit and delete every entity type clients
    write (server-authored types are refused for everyone before this matters)."""
    return all(RULES[level].get(t) == _EVERYTHING for t in _CLIENT_TYPES)


def write_check(
    entity_type: str, entity_id: str, before: Document | None, after: Mapping[str, object]
) -> WriteCheck:
    """The check for a merge whose stored document was ``before`` (None for a new entity).

    The stored document passed schema validation when it was written, so its values are
    complete.
    """
    values = None if before is None else inspect_document(SCHEMAS[entity_type], before).values
    return WriteCheck(entity_type, entity_id, values, after)


def changed_fields(check: WriteCheck) -> list[str]:
    """Top-level fields whose value differs between before and after, in sorted order."""
    before = check.before or {}
    names = set(before) | set(check.after)
    return sorted(n for n in names if before.get(n) != check.after.get(n))


def _in_scope(rule: EntityRule, writer: Writer, check: WriteCheck) -> bool:
    if rule.scope is Scope.ANY:
        return True
    if rule.scope is Scope.SUMMONED_ACTIVITY:
        return check.entity_id in writer.summoned_to
    before = check.before or {}
    return before.get("user_id") == writer.user_id


def check_write(writer: Writer, check: WriteCheck) -> Rejection | None:
    """None if ``writer`` may make this change, else the rejection naming what is refused."""
    rule = RULES[writer.level].get(check.entity_type, _NOTHING)
    kind = check.entity_type
    if check.before is None:
        if rule.create:
            return None
        return Rejection(
            RejectCode.FORBIDDEN_CREATE,
            f"a {writer.level} may not create a {kind}",
            {"entity_type": kind},
        )
    changed = changed_fields(check)
    if not changed:
        return None
    if not _in_scope(rule, writer, check) or not (rule.edit or rule.delete):
        return Rejection(
            RejectCode.FORBIDDEN_ENTITY,
            f"a {writer.level} may not change {kind} {check.entity_id}" + _scope_reason(rule),
            {"entity_type": kind, "field": changed[0]},
        )
    for name in changed:
        if name == DELETED:
            if not rule.delete:
                return Rejection(
                    RejectCode.FORBIDDEN_DELETE,
                    f"a {writer.level} may not delete or restore a {kind}",
                    {"entity_type": kind, "field": DELETED},
                )
        elif not rule.may_edit(name):
            return Rejection(
                RejectCode.FORBIDDEN_FIELD,
                f"a {writer.level} may not change the {name!r} field of a {kind}",
                {"entity_type": kind, "field": name},
            )
    return None


def _scope_reason(rule: EntityRule) -> str:
    if rule.scope is Scope.SUMMONED_ACTIVITY:
        return " (only activities you are summoned to)"
    if rule.scope is Scope.OWN_SUMMONING:
        return " (only your own summonings)"
    return ""


SCOPE_MEANINGS: Mapping[Scope, str] = {
    Scope.ANY: "every entity of the type",
    Scope.SUMMONED_ACTIVITY: "activities a non-deleted summoning names the user's id for",
    Scope.OWN_SUMMONING: "summonings whose user_id is the user's id",
}


def rules_description() -> dict[str, Any]:
    """The write rules as language-neutral data (``contract/permissions.json``), so clients
    show what a member may edit by the rules the server applies instead of a copy of them."""
    return {
        "description": "Who may write what: per level and entity type (model/permissions.py).",
        "deleted_field": DELETED,
        "all_fields": sorted(ALL_FIELDS)[0],
        "scopes": {scope.value: SCOPE_MEANINGS[scope] for scope in Scope},
        "levels": {
            level.value: {
                "may_push": level in WRITE_LEVELS,
                "entities": {
                    entity_type: {
                        "create": rule.create,
                        "delete": rule.delete,
                        "edit": sorted(rule.edit),
                        "scope": rule.scope.value,
                    }
                    for entity_type, rule in RULES[level].items()
                },
            }
            for level in Level
        },
    }
