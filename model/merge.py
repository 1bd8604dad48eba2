"""Deciding what happens to one entity's incoming changes: pure, no database, no network.

The store calls :func:`decode_entity_changes` before it takes any lock (cheap checks on the
bytes alone), then :func:`merge_entity` under the project's lock with what the log already
holds. Either every new change of the entity goes in, or none does and a :class:`Rejection`
says why.

The costly part of a merge, applying the changes and reading the result
(:func:`apply_and_inspect`), depends only on the document it starts from and the changes in
order. So the store may do it before the lock (:func:`preapply`, onto the document it has
cached) and hand it to :func:`merge_entity`, which uses it only when the entity is still at
that version and the changes to apply are exactly those; otherwise it applies them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from automerge.core import Document

from fieldsync.model.automerge_format.changes import ChangeFormatError, ChangeHeader, parse_change
from fieldsync.model.automerge_format.documents import AutomergeError, apply_changes, contained
from fieldsync.model.automerge_format.op_columns import UnsupportedValue, unsupported_values
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.limits import Limits
from fieldsync.model.rejections import RejectCode, Rejection
from fieldsync.model.schema import is_valid_entity_id
from fieldsync.model.validation import inspect_document
from fieldsync.model.value_check import unsupported_value_rejection

MAX_VIOLATIONS_LISTED = 10
"""Schema violations listed in one rejection (the rest are counted): an answer stays small
whatever a hostile document holds, so a push of many broken entities cannot make a large
one."""


@dataclass(frozen=True, slots=True)
class EntityChanges:
    """Changes a client sends for one entity: raw Automerge change chunks."""

    entity_type: str
    entity_id: str
    changes: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class DecodedChanges:
    """An entity's change set whose bytes are well-formed; duplicates within it removed."""

    entity_type: str
    entity_id: str
    unique: tuple[ChangeHeader, ...]
    hash_per_input: tuple[bytes, ...]
    # Values the binding cannot read, found in the bytes (empty but for hostile input).
    unsupported: tuple[tuple[ChangeHeader, UnsupportedValue], ...] = ()


@dataclass(frozen=True, slots=True)
class StoredEntity:
    """What the store holds for an entity right now (read under the project's lock)."""

    project_id: UUID
    entity_type: str
    version: int
    heads: tuple[bytes, ...]
    size_bytes: int
    document: Document | None
    op_count: int = 0  # ops of every change logged for it


@dataclass(frozen=True, slots=True)
class Merged:
    """An accepted change set: the changes to log (in dependency order) and the result."""

    decoded: DecodedChanges
    new_changes: tuple[ChangeHeader, ...]
    logged_seqs: Mapping[bytes, int]
    document: Document | None = None
    heads: tuple[bytes, ...] = ()
    values: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Applied:
    """Changes applied to a document and the result read (or why that failed), made before
    the lock: valid for the entity at ``base_version`` (0: not stored yet) and exactly the
    changes ``hashes``, in that order."""

    base_version: int
    hashes: tuple[bytes, ...]
    result: tuple[Document, tuple[bytes, ...], Mapping[str, object]] | Rejection


def decode_entity_changes(item: EntityChanges, limits: Limits) -> DecodedChanges | Rejection:
    """Check what can be checked from the bytes alone: type, id, sizes, chunk format."""
    if item.entity_type not in SCHEMAS:
        known = ", ".join(sorted(SCHEMAS))
        return Rejection(
            RejectCode.UNKNOWN_ENTITY_TYPE,
            f"unknown entity type {item.entity_type[:64]!r}; known types: {known}",
        )
    if not is_valid_entity_id(item.entity_id):
        return Rejection(
            RejectCode.INVALID_ENTITY_ID,
            f"entity id {item.entity_id[:80]!r} is not 1-64 characters of A-Z a-z 0-9 _ -",
        )
    if not item.changes:
        return Rejection(RejectCode.EMPTY_CHANGE_SET, "the change set holds no changes")
    if len(item.changes) > limits.max_changes_per_entity:
        return Rejection(
            RejectCode.TOO_MANY_CHANGES,
            f"{len(item.changes)} changes for one entity; at most "
            f"{limits.max_changes_per_entity} per push",
            {"limit": limits.max_changes_per_entity},
        )
    unique: dict[bytes, ChangeHeader] = {}
    hashes: list[bytes] = []
    unsupported: list[tuple[ChangeHeader, UnsupportedValue]] = []
    for index, data in enumerate(item.changes):
        if len(data) > limits.max_change_bytes:
            return Rejection(
                RejectCode.CHANGE_TOO_LARGE,
                f"change {index} is {len(data)} bytes; at most {limits.max_change_bytes}",
                {"index": index, "limit": limits.max_change_bytes},
            )
        try:
            header = parse_change(data, max_inflated_bytes=limits.max_change_bytes)
        except ChangeFormatError as exc:
            return Rejection(
                RejectCode.UNDECODABLE_CHANGE,
                f"change {index} is not a valid Automerge change: {exc}",
                {"index": index},
            )
        if header.op_count > limits.max_ops_per_change:
            return Rejection(
                RejectCode.TOO_MANY_OPS,
                f"change {index} holds {header.op_count} ops; at most "
                f"{limits.max_ops_per_change} per change",
                {"index": index, "limit": limits.max_ops_per_change},
            )
        if header.hash not in unique:
            try:
                found = unsupported_values(header)
            except ChangeFormatError as exc:
                return Rejection(
                    RejectCode.UNDECODABLE_CHANGE,
                    f"change {index} is not a valid Automerge change: {exc}",
                    {"index": index},
                )
            unsupported.extend((header, value) for value in found)
            unique[header.hash] = header
        hashes.append(header.hash)
    return DecodedChanges(
        item.entity_type,
        item.entity_id,
        tuple(unique.values()),
        tuple(hashes),
        tuple(unsupported),
    )


def keep_within_push_ops(batch: list[DecodedChanges | Rejection], limits: Limits) -> None:
    """Refuse, in place, the entities that would take the push past ``max_ops_per_push``.

    Entities are counted in push order, so the first ones go in and a client can send the
    rest in later pushes. Changes already logged count too: what is fresh is only known
    under the lock, and this check is meant to come before it.
    """
    used = 0
    for index, item in enumerate(batch):
        if isinstance(item, Rejection):
            continue
        ops = sum(c.op_count for c in item.unique)
        if used + ops <= limits.max_ops_per_push:
            used += ops
            continue
        if ops > limits.max_ops_per_push:
            why = f"its changes hold {ops} ops; split them over several pushes"
        else:
            why = "push it again in a later push"
        batch[index] = Rejection(
            RejectCode.TOO_MANY_OPS,
            f"this push would hold more than {limits.max_ops_per_push} ops with entity "
            f"{item.entity_id}: {why}",
            {"limit": limits.max_ops_per_push},
        )


def dependency_order(
    changes: Sequence[ChangeHeader], present: set[bytes]
) -> tuple[list[ChangeHeader], list[bytes]]:
    """Order ``changes`` so each follows its dependencies; also return deps found nowhere.

    ``present`` holds the hashes already in the document. Among changes that are ready at
    the same time the input order is kept, so the same input always gives the same order.
    """
    known = present | {c.hash for c in changes}
    missing = sorted({d for c in changes for d in c.deps if d not in known})
    if missing:
        return [], missing
    ordered: list[ChangeHeader] = []
    done = set(present)
    waiting = list(changes)
    while waiting:
        still: list[ChangeHeader] = []
        for change in waiting:
            if all(dep in done for dep in change.deps):
                ordered.append(change)
                done.add(change.hash)
            else:
                still.append(change)
        if len(still) == len(waiting):
            # Only reachable with a dependency cycle, which SHA-256 hashes rule out.
            return [], sorted({d for c in still for d in c.deps if d not in done})
        waiting = still
    return ordered, []


def _input_index(decoded: DecodedChanges, change_hash: bytes) -> int:
    return decoded.hash_per_input.index(change_hash)


def _foreign_change(
    decoded: DecodedChanges,
    fresh: Sequence[ChangeHeader],
    logged: Mapping[bytes, int],
    elsewhere: Mapping[bytes, str],
) -> Rejection | None:
    """A change belongs to exactly one entity: refuse one logged under another entity, or
    one that builds on another entity's change (its history is not this entity's)."""
    for change in fresh:
        owner = elsewhere.get(change.hash)
        if owner is not None:
            return Rejection(
                RejectCode.FOREIGN_CHANGE,
                f"change {change.hash.hex()} belongs to entity {owner}, not to "
                f"{decoded.entity_id}; a change belongs to one entity only",
                {
                    "index": _input_index(decoded, change.hash),
                    "hash": change.hash.hex(),
                    "entity_id": owner,
                },
            )
        for dep in change.deps:
            owner = elsewhere.get(dep)
            if owner is not None and dep not in logged:
                return Rejection(
                    RejectCode.FOREIGN_CHANGE,
                    f"change {change.hash.hex()} builds on change {dep.hex()} of entity "
                    f"{owner}; an entity's changes build only on its own history",
                    {
                        "index": _input_index(decoded, change.hash),
                        "hash": change.hash.hex(),
                        "entity_id": owner,
                    },
                )
    return None


def _unrelated_history(
    decoded: DecodedChanges, fresh: Sequence[ChangeHeader], exists: bool
) -> Rejection | None:
    """An entity's history has exactly one root, its creation change (the only change with
    no dependencies). Every other change names dependencies that must be logged for this
    entity or come in this push (``dependency_order`` checks that), so with one root every
    change descends from it."""
    roots = [c for c in fresh if not c.deps]
    allowed = 0 if exists else 1
    if len(roots) <= allowed:
        return None
    extra = roots[allowed]
    why = (
        "the entity exists, so it has its creation change already"
        if exists
        else f"{len(roots)} changes without dependencies; an entity is created once"
    )
    return Rejection(
        RejectCode.UNRELATED_HISTORY,
        f"change {extra.hash.hex()} does not descend from the creation change of entity "
        f"{decoded.entity_id}: {why}",
        {"index": _input_index(decoded, extra.hash), "hash": extra.hash.hex()},
    )


def merge_entity(
    project_id: UUID,
    decoded: DecodedChanges,
    stored: StoredEntity | None,
    logged: Mapping[bytes, int],
    limits: Limits,
    elsewhere: Mapping[bytes, str] | None = None,
    applied: Applied | None = None,
) -> Merged | Rejection:
    """Merge ``decoded`` into the stored entity; ``logged`` maps its logged hashes to seqs.

    ``logged`` must contain every hash of ``decoded`` and every dependency they name that
    the log holds for this entity (the store asks for exactly those). ``elsewhere`` maps
    those of the same hashes that belong to *other* entities of the project (logged, or
    taken by an earlier entity of the same push) to that entity's id. ``applied``: the
    changes applied before the lock (:func:`preapply`), used only if still valid.
    """
    if stored is not None and stored.project_id != project_id:
        return Rejection(
            RejectCode.WRONG_PROJECT,
            f"entity {decoded.entity_id} belongs to another project",
        )
    if stored is not None and stored.entity_type != decoded.entity_type:
        return Rejection(
            RejectCode.WRONG_ENTITY_TYPE,
            f"entity {decoded.entity_id} is a {stored.entity_type}, not a {decoded.entity_type}",
        )
    fresh = [c for c in decoded.unique if c.hash not in logged]
    if not fresh:
        return Merged(decoded, (), logged)
    foreign = _foreign_change(decoded, fresh, logged, elsewhere or {})
    if foreign is not None:
        return foreign
    unrelated = _unrelated_history(decoded, fresh, stored is not None)
    if unrelated is not None:
        return unrelated
    fresh_hashes = {c.hash for c in fresh}
    unreadable = [(c, v) for c, v in decoded.unsupported if c.hash in fresh_hashes]
    if unreadable:
        first_index = {h: decoded.hash_per_input.index(h) for h in fresh_hashes}
        return unsupported_value_rejection(
            unreadable, fresh, stored.document if stored else None, first_index
        )
    ordered, missing = dependency_order(fresh, set(logged))
    if missing:
        return Rejection(
            RejectCode.MISSING_DEPENDENCIES,
            f"{len(missing)} dependencies are neither logged for entity "
            f"{decoded.entity_id} nor in this push",
            {"missing": [h.hex() for h in missing]},
        )
    ops = (stored.op_count if stored else 0) + sum(c.op_count for c in ordered)
    if ops > limits.max_document_ops:
        return Rejection(
            RejectCode.DOCUMENT_TOO_LARGE,
            f"entity {decoded.entity_id} would hold {ops} ops; at most {limits.max_document_ops}",
            {"limit": limits.max_document_bytes, "limit_ops": limits.max_document_ops},
        )
    size = (stored.size_bytes if stored else 0) + sum(len(c.data) for c in ordered)
    if size > limits.max_document_bytes:
        return Rejection(
            RejectCode.DOCUMENT_TOO_LARGE,
            f"entity {decoded.entity_id} would grow to about {size} bytes; "
            f"at most {limits.max_document_bytes}",
            {"limit": limits.max_document_bytes},
        )
    base_version = stored.version if stored is not None else 0
    hashes = tuple(c.hash for c in ordered)
    if applied is None or (applied.base_version, applied.hashes) != (base_version, hashes):
        applied = Applied(
            base_version,
            hashes,
            apply_and_inspect(decoded.entity_type, stored.document if stored else None, ordered),
        )
    if isinstance(applied.result, Rejection):
        return applied.result
    document, heads, values = applied.result
    return Merged(decoded, tuple(ordered), logged, document, heads, values)


def apply_and_inspect(
    entity_type: str, base: Document | None, ordered: Sequence[ChangeHeader]
) -> tuple[Document, tuple[bytes, ...], Mapping[str, object]] | Rejection:
    """``ordered`` applied to (a fork of) ``base`` and the result validated: the document,
    its heads and its values, or the rejection."""
    try:
        document = apply_changes(base, ordered)
    except AutomergeError as exc:
        return Rejection(RejectCode.CORRUPT_CHANGE, f"changes could not be applied: {exc}")
    schema = SCHEMAS[entity_type]
    try:
        inspection = contained(lambda: inspect_document(schema, document))
        heads = tuple(sorted(contained(document.get_heads)))
    except AutomergeError as exc:
        return Rejection(RejectCode.UNSUPPORTED_VALUE, f"the document cannot be read: {exc}")
    if inspection.violations:
        first = inspection.violations[0]
        more = len(inspection.violations) - 1
        return Rejection(
            RejectCode.SCHEMA_VIOLATION,
            f"{first}" + (f" (and {more} more)" if more else ""),
            {
                "violations": [
                    {"field": v.field, "expected": v.expected, "got": v.got}
                    for v in inspection.violations[:MAX_VIOLATIONS_LISTED]
                ],
                "violation_count": len(inspection.violations),
            },
        )
    return document, heads, inspection.values


def preapply(
    decoded: DecodedChanges, base_version: int, base: Document | None, limits: Limits
) -> Applied | None:
    """Before the lock: every change of ``decoded`` applied to ``base`` (the entity's
    document at ``base_version`` as this process has it; None and 0 for a new entity), as
    the merge will apply them if none of them is logged yet. None when the merge would not
    get that far on these grounds alone (unreadable values, ops or bytes over the limits,
    dependencies outside the push with no document to hold them)."""
    if decoded.unsupported or base_version < 0:
        return None
    ops = sum(c.op_count for c in decoded.unique)
    size = sum(len(c.data) for c in decoded.unique)
    if ops > limits.max_document_ops or size > limits.max_document_bytes:
        return None
    pushed = {c.hash for c in decoded.unique}
    outside = {dep for c in decoded.unique for dep in c.deps} - pushed
    if base is None and outside:
        return None  # its history is not all here: the merge refuses or reloads it
    ordered, missing = dependency_order(decoded.unique, outside)
    if missing or not ordered:
        return None
    hashes = tuple(c.hash for c in ordered)
    return Applied(base_version, hashes, apply_and_inspect(decoded.entity_type, base, ordered))
