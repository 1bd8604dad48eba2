"""Protocol conformance vectors: golden frames for every message, and frames to refuse.

A port of the protocol to another language (the TypeScript SDK, later Swift or Kotlin) is
tested against these instead of against a second description of the wire format. Every
frame here is made by ``sync.codec.encode`` from ``sync.messages`` records, or is a hostile
variation of one; what a decoder must make of it is found by running ``sync.codec``'s own
decoders on it, so the vectors cannot drift from the codec.

- A **valid** vector holds a frame and the message it decodes to (rendered as JSON: bin as
  ``{"$bin": "<hex>"}``, every field present, defaults filled in). A *canonical* one is
  exactly what ``encode`` writes for that message: an encoder must reproduce it byte for
  byte. Non-canonical ones ("t" not first, optional fields left out, wide integer formats)
  must decode to the same message.
- An **invalid** vector holds a frame and the error code the decoder must refuse it with
  (and the push id, for a push whose id can still be read).
- A vector may name ``limits`` (``model.limits.Limits`` fields) the decoder must use, so that
  limit violations are small files.

:func:`contract_vectors` is pure; :func:`vector_files` renders them as the files of
``contract/vectors`` and :func:`protocol_description` the ``contract/protocol.json`` summary
of the message records, codes and decoder bounds.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync import codec
from fieldsync.sync.codec import ProtocolViolation, decode_client, decode_server, encode
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    CONFLICT_STATUSES,
    PROTOCOL_VERSIONS,
    SERVER_STATES,
    ChangeRecord,
    Changes,
    ConflictRecord,
    Conflicts,
    EntityAccepted,
    EntityPush,
    EntityRejected,
    Error,
    Hello,
    Message,
    ProjectCursor,
    ProjectError,
    Push,
    PushResult,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotEntity,
    Status,
    Subscribe,
    Synced,
    Unsubscribe,
    Welcome,
)

__all__ = ["Vector", "contract_vectors", "protocol_description", "to_json", "vector_files"]

CLIENT: Final = "client_to_server"
SERVER: Final = "server_to_client"

PROJECT: Final = "0b6f3c1e-9a2d-4f57-8c1b-2e7d4a9f0c35"
USER: Final = "5d1c8e2a-3b4f-4e6a-9c7d-8e9f0a1b2c3d"
# Opaque payloads: the codec never looks inside documents and changes.
CHANGE_A: Final = bytes.fromhex("856f4a83a1b2c3d401") + bytes(range(24))
CHANGE_B: Final = bytes.fromhex("856f4a8311223344010a") + b"second change"
DOCUMENT: Final = bytes.fromhex("856f4a83") + bytes(range(40))
HASH: Final = "9f2c" * 16


@dataclass(frozen=True, slots=True)
class Vector:
    """One frame and what a decoder must make of it."""

    name: str
    direction: str  # CLIENT or SERVER: who sends the frame
    description: str
    frame: bytes
    message: Message | None = None  # valid: what it decodes to
    canonical: bool = False  # valid: encode(message) == frame
    error: ErrorCode | None = None  # invalid: the code to refuse it with
    push_id: int | None = None  # invalid: the push id the error carries
    error_message: str = ""  # invalid: what sync.codec says (the wording is free)
    limits: Mapping[str, int] = field(default_factory=dict)


# --- frames ------------------------------------------------------------------------------


def _pack(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


def _map(*pairs: tuple[object, object]) -> bytes:
    """A msgpack map from raw pairs, in order, duplicates allowed (encode would refuse)."""
    return _map_header(len(pairs)) + b"".join(_pack(k) + _pack(v) for k, v in pairs)


def _raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A msgpack map from already-packed keys and values."""
    return _map_header(len(pairs)) + b"".join(k + v for k, v in pairs)


def _map_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x80 | count])
    if count < 2**16:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def _fields(message: Message) -> list[tuple[str, object]]:
    """The message's map as encode writes it, as pairs in order."""
    decoded: dict[str, object] = msgspec.msgpack.decode(encode(message))
    return list(decoded.items())


def _reordered(message: Message) -> bytes:
    pairs = _fields(message)
    return _map(*pairs[1:], pairs[0])  # "t" last


def _without(message: Message, *names: str) -> bytes:
    return _map(*[(k, v) for k, v in _fields(message) if k not in names])


def _with(message: Message, *extra: tuple[object, object]) -> bytes:
    return _map(*_fields(message), *extra)


def _replaced(message: Message, name: str, value: object) -> bytes:
    return _map(*[(k, value if k == name else v) for k, v in _fields(message)])


def _nested_arrays(depth: int, inner: bytes = b"\xc0") -> bytes:
    return b"\x91" * depth + inner


# --- the messages ------------------------------------------------------------------------

_HELLO = Hello(
    (1,),
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl",
    "tablet-7f3a",
    (ProjectCursor(PROJECT, None), ProjectCursor("5a1e0d2c-0000-4000-8000-000000000001", 41)),
    1500,
    "fieldsync-client/0.1.0",
)
_PUSH = Push(
    7,
    PROJECT,
    (
        EntityPush("activity", "act-load-trucks", (CHANGE_A, CHANGE_B)),
        EntityPush("location", "loc-depot-north", (CHANGE_B,)),
    ),
)
_WELCOME = Welcome(
    1,
    USER,
    "3fa85f6457174562b3fc2c963f66afa6",
    {
        "max_frame_bytes": DEFAULT_LIMITS.max_frame_bytes,
        "max_entities_per_batch": DEFAULT_LIMITS.max_entities_per_batch,
        "max_changes_per_entity": DEFAULT_LIMITS.max_changes_per_entity,
        "max_change_bytes": DEFAULT_LIMITS.max_change_bytes,
        "max_document_bytes": DEFAULT_LIMITS.max_document_bytes,
    },
)
_CHANGES = Changes(
    PROJECT,
    (
        ChangeRecord(42, "activity", "act-load-trucks", CHANGE_A),
        ChangeRecord(43, "location", "loc-depot-north", CHANGE_B),
    ),
)
_CONCURRENT_EDIT = ConflictRecord(
    "c" * 64,
    "open",
    "concurrent_edit",
    ("act-1",),
    ("description",),
    12,
    None,
    {
        "kind": "concurrent_edit",
        "entity_ids": ["act-1"],
        "fields": ["description"],
        "values": {"kept": "South trench", "candidates": ["South trench", "North trench"]},
        "changes": [
            {"hash": HASH, "actor": "0202", "user": USER},
            {"hash": "41ab" * 16, "actor": "0101", "user": USER},
        ],
        "resolution": None,
    },
)
_BROKEN_INTERVAL = ConflictRecord(
    "b" * 64,
    "resolved",
    "broken_interval",
    ("act-2",),
    ("ends_at", "starts_at"),
    8,
    9,
    {
        "kind": "broken_interval",
        "entity_ids": ["act-2"],
        "fields": ["ends_at", "starts_at"],
        "values": {"starts_at": "2026-06-02T13:00:00Z", "ends_at": "2026-06-02T10:00:00Z"},
        "changes": [],
        "resolution": None,
        "coordinates": {"latitude": 46.5, "longitude": -7.25},
    },
)
_REMOVED = ConflictRecord("a" * 64, "removed")
_PUSH_RESULT = PushResult(
    7,
    PROJECT,
    (
        EntityAccepted("act-load-trucks", (42, 43)),
        EntityRejected(
            "act-unload",
            "schema_violation",
            "activity field 'ends_at': expected timestamp, got missing.",
            {"violations": [{"field": "ends_at", "expected": "timestamp", "got": "missing"}]},
        ),
        EntityRejected(
            "act-copy",
            "foreign_change",
            "change 0 belongs to entity act-1",
            {"index": 0, "hash": HASH, "entity_id": "act-1"},
        ),
        EntityRejected(
            "act-second-root",
            "unrelated_history",
            "change 1 does not descend from the entity's creation change",
            {"index": 1, "hash": HASH},
        ),
        EntityRejected(
            "loc-counter",
            "unsupported_value",
            "change 0 writes a counter to field 'visits', which the server cannot read",
            {"index": 0, "field": "visits", "type": "counter"},
        ),
        EntityRejected(
            "act-gap",
            "missing_dependencies",
            "1 change depends on changes that are not logged",
            {"missing": [HASH]},
        ),
        EntityRejected("act-none", "empty_change_set", "no changes"),
    ),
)


def _valid() -> list[Vector]:
    """One canonical vector per message (several for records with variants)."""
    cases: list[tuple[str, str, str, Message]] = [
        (CLIENT, "hello", "a hello with two projects, one never bootstrapped", _HELLO),
        (
            CLIENT,
            "hello_minimal",
            "a hello with no projects and an empty outbox",
            Hello((1, 2), "token", "device-1"),
        ),
        (CLIENT, "subscribe", "subscribe from a cursor", Subscribe(ProjectCursor(PROJECT, 41))),
        (
            CLIENT,
            "subscribe_snapshot",
            "subscribe asking for a snapshot (cursor nil)",
            Subscribe(ProjectCursor(PROJECT, None)),
        ),
        (CLIENT, "unsubscribe", "unsubscribe", Unsubscribe(PROJECT)),
        (CLIENT, "push", "a push of two entities", _PUSH),
        (SERVER, "welcome", "welcome with the default limits", _WELCOME),
        (
            SERVER,
            "project_error",
            "a project the user cannot see",
            ProjectError(PROJECT, "project_unavailable", "no such project, or not a member"),
        ),
        (SERVER, "snapshot_begin", "a snapshot begins", SnapshotBegin(PROJECT, 41, 2)),
        (
            SERVER,
            "snapshot_chunk",
            "two entities of a snapshot",
            SnapshotChunk(
                PROJECT,
                (
                    SnapshotEntity("project_settings", "settings", DOCUMENT),
                    SnapshotEntity("activity", "act-load-trucks", DOCUMENT),
                ),
            ),
        ),
        (SERVER, "snapshot_end", "a snapshot ends", SnapshotEnd(PROJECT, 41)),
        (SERVER, "changes", "two logged changes", _CHANGES),
        (
            SERVER,
            "conflicts",
            "an open, a resolved and a removed conflict record",
            Conflicts(PROJECT, (_CONCURRENT_EDIT, _BROKEN_INTERVAL, _REMOVED)),
        ),
        (SERVER, "synced", "caught up", Synced(PROJECT, 43)),
        (
            SERVER,
            "push_result",
            "accepted and rejected entities, every recent reject code",
            _PUSH_RESULT,
        ),
        (SERVER, "error", "a refused push", Error("rate_limited", "slow down", False, 7)),
        (
            SERVER,
            "error_fatal",
            "a fatal error",
            Error("token_expired", "the token has expired", True, None),
        ),
        (
            SERVER,
            "status_degraded",
            "the server lost its database",
            Status("degraded", "database_unavailable", "changes are kept on this device"),
        ),
        (SERVER, "status_ok", "the server is back", Status("ok")),
    ]
    return [
        Vector(name, direction, description, encode(message), message, canonical=True)
        for direction, name, description, message in cases
    ]


def _variants() -> list[Vector]:
    """Valid frames that encode would not write, and what they decode to."""
    wide_ints = _raw_map(
        (_pack("t"), _pack("synced")),
        (_pack("project_id"), _pack(PROJECT)),
        (_pack("cursor"), b"\xcf" + (43).to_bytes(8, "big")),  # uint64 format for 43
    )
    cases: list[tuple[str, str, str, bytes, Message]] = [
        (CLIENT, "hello_t_last", "'t' need not be the first key", _reordered(_HELLO), _HELLO),
        (
            CLIENT,
            "hello_defaults",
            "optional hello fields left out",
            _without(
                Hello((1,), "token", "device-1"), "projects", "outbox_age_ms", "client_version"
            ),
            Hello((1,), "token", "device-1"),
        ),
        (
            SERVER,
            "error_defaults",
            "optional error fields left out",
            _without(Error("internal_error", "oops"), "fatal", "push_id"),
            Error("internal_error", "oops"),
        ),
        (
            SERVER,
            "status_defaults",
            "optional status fields left out",
            _without(Status("ok"), "code", "message"),
            Status("ok"),
        ),
        (
            SERVER,
            "push_result_no_details",
            "a rejection without details",
            _map(
                ("t", "push_result"),
                ("push_id", 1),
                ("project_id", PROJECT),
                (
                    "results",
                    [{"ok": False, "entity_id": "e", "code": "corrupt_change", "message": "m"}],
                ),
            ),
            PushResult(1, PROJECT, (EntityRejected("e", "corrupt_change", "m"),)),
        ),
        (
            SERVER,
            "synced_wide_int",
            "integers may use any msgpack integer format",
            wide_ints,
            Synced(PROJECT, 43),
        ),
        (SERVER, "changes_t_last", "'t' need not be the first key", _reordered(_CHANGES), _CHANGES),
    ]
    return [
        Vector(name, direction, description, frame, message)
        for direction, name, description, frame, message in cases
    ]


def _invalid() -> list[Vector]:
    """Frames to refuse; the code each gets is filled in from the codec."""
    long_id = "p" * (codec.MAX_PROJECT_ID_CHARS + 1)
    synced = Synced(PROJECT, 43)
    details: dict[str, object] = {"a": 1}
    for _ in range(codec.MAX_DETAILS_DEPTH):
        details = {"a": details}
    many_limits = {f"limit_{i}": 1 for i in range(codec.MAX_LIMITS_KEYS + 1)}
    str32 = b"\xdb\xff\xff\xff\xff" + b"abc"  # declares 4 GiB, holds 3 bytes
    client: list[tuple[str, str, bytes] | tuple[str, str, bytes, Mapping[str, int]]] = [
        (
            "push_changes_not_bin",
            "a change that is a str, not bin (the push id is kept)",
            _replaced(
                _PUSH,
                "entities",
                [{"entity_type": "activity", "entity_id": "a", "changes": ["not bytes"]}],
            ),
        ),
        (
            "push_too_many_entities",
            "more entities than max_entities_per_batch",
            encode(_PUSH),
            {"max_entities_per_batch": 1},
        ),
        ("push_no_id", "a push without push_id", _without(_PUSH, "push_id")),
        ("push_negative_id", "a negative push id", _replaced(_PUSH, "push_id", -1)),
        (
            "hello_duplicate_project",
            "the same project twice in a hello",
            _replaced(_HELLO, "projects", [{"project_id": PROJECT, "cursor": 1}] * 2),
        ),
        (
            "hello_too_many_projects",
            f"more than {codec.MAX_HELLO_PROJECTS} projects",
            _replaced(
                _HELLO,
                "projects",
                [
                    {"project_id": f"p{i}", "cursor": None}
                    for i in range(codec.MAX_HELLO_PROJECTS + 1)
                ],
            ),
        ),
        (
            "hello_client_version_too_long",
            f"a client_version over {codec.MAX_CLIENT_VERSION_CHARS} characters",
            _replaced(_HELLO, "client_version", "v" * (codec.MAX_CLIENT_VERSION_CHARS + 1)),
        ),
        (
            "hello_token_too_long",
            f"a token over {codec.MAX_TOKEN_CHARS} characters",
            _replaced(_HELLO, "token", "t" * (codec.MAX_TOKEN_CHARS + 1)),
        ),
        (
            "hello_versions_not_ints",
            "versions holding a string",
            _replaced(_HELLO, "versions", ["1"]),
        ),
        (
            "hello_bool_cursor",
            "true is not an integer",
            _replaced(_HELLO, "projects", [{"project_id": PROJECT, "cursor": True}]),
        ),
        (
            "subscribe_unknown_field",
            "a field the message does not have",
            _with(Subscribe(ProjectCursor(PROJECT, 1)), ("extra", 1)),
        ),
        ("unknown_type_welcome", "a server message sent by a client", encode(_WELCOME)),
    ]
    server: list[tuple[str, str, bytes] | tuple[str, str, bytes, Mapping[str, int]]] = [
        ("empty", "an empty frame", b""),
        ("not_msgpack", "0xc1 is never msgpack", b"\xc1"),
        ("not_a_map", "an array instead of a map", _pack(["synced", PROJECT, 1])),
        ("truncated", "the frame ends inside a value", encode(_CHANGES)[:-5]),
        ("trailing_bytes", "bytes after the message", encode(synced) + b"\x00"),
        (
            "int_key",
            "a map key that is not a string",
            _raw_map((_pack("t"), _pack("synced")), (_pack(1), _pack(PROJECT))),
        ),
        (
            "extension_type",
            "a msgpack timestamp extension as a value",
            _raw_map(
                (_pack("t"), _pack("synced")),
                (_pack("project_id"), _pack(PROJECT)),
                (_pack("cursor"), b"\xd6\xff\x00\x00\x00\x01"),
            ),
        ),
        (
            "invalid_utf8",
            "a string that is not UTF-8",
            _raw_map(
                (_pack("t"), _pack("synced")),
                (_pack("project_id"), b"\xa2\xc3\x28"),
                (_pack("cursor"), _pack(1)),
            ),
        ),
        (
            "deep_nesting_skipped",
            "5,000 nested arrays before the 't' key",
            _raw_map((_pack("x"), _nested_arrays(5000)), (_pack("t"), _pack("synced"))),
        ),
        (
            "deep_nesting_in_field",
            "5,000 nested arrays where a string belongs",
            _raw_map(
                (_pack("t"), _pack("synced")),
                (_pack("project_id"), _nested_arrays(5000)),
                (_pack("cursor"), _pack(1)),
            ),
        ),
        (
            "deep_details",
            f"rejection details nested over {codec.MAX_DETAILS_DEPTH} levels",
            _map(
                ("t", "push_result"),
                ("push_id", 1),
                ("project_id", PROJECT),
                (
                    "results",
                    [
                        {
                            "ok": False,
                            "entity_id": "e",
                            "code": "c",
                            "message": "m",
                            "details": details,
                        }
                    ],
                ),
            ),
        ),
        (
            "huge_array",
            "an array header declaring 4 billion changes",
            _raw_map(
                (_pack("t"), _pack("changes")),
                (_pack("project_id"), _pack(PROJECT)),
                (
                    _pack("changes"),
                    b"\xdd\xff\xff\xff\xff"
                    + _pack(
                        {"seq": 1, "entity_type": "plan", "entity_id": "p", "change": CHANGE_A}
                    ),
                ),
            ),
        ),
        (
            "huge_string",
            "a string header declaring 4 GiB",
            _raw_map(
                (_pack("t"), _pack("synced")),
                (_pack("project_id"), str32),
                (_pack("cursor"), _pack(1)),
            ),
        ),
        (
            "huge_bin",
            "a bin header declaring 4 GiB",
            _raw_map(
                (_pack("t"), _pack("snapshot_chunk")),
                (_pack("project_id"), _pack(PROJECT)),
                (
                    _pack("entities"),
                    b"\x91"
                    + _raw_map(
                        (_pack("entity_type"), _pack("plan")),
                        (_pack("entity_id"), _pack("p")),
                        (_pack("document"), b"\xc6\xff\xff\xff\xff\x00"),
                    ),
                ),
            ),
        ),
        ("huge_map", "a map header declaring 4 billion keys", b"\xdf\xff\xff\xff\xff\xa1t"),
        (
            "too_many_keys",
            f"more than {codec.MAX_MESSAGE_KEYS} keys",
            _map(("t", "synced"), *[(f"k{i}", 0) for i in range(codec.MAX_MESSAGE_KEYS)]),
        ),
        ("unknown_type", "a type no server sends", _map(("t", "frobnicate"))),
        ("client_type", "a client message sent by a server", encode(_HELLO)),
        ("type_not_str", "'t' holding an integer", _map(("t", 1))),
        ("no_type", "a map without 't'", _map(("project_id", PROJECT), ("cursor", 1))),
        (
            "type_twice",
            "'t' twice",
            _map(("t", "synced"), ("project_id", PROJECT), ("cursor", 1), ("t", "synced")),
        ),
        ("duplicate_field", "a field twice", _with(synced, ("cursor", 2))),
        ("missing_field", "a required field left out", _without(synced, "cursor")),
        ("unknown_field", "a field the message does not have", _with(synced, ("seq", 1))),
        ("negative_int", "a negative cursor", _replaced(synced, "cursor", -1)),
        ("int_over_int64", "a cursor over 2^63-1", _replaced(synced, "cursor", 2**64 - 1)),
        ("float_for_int", "a float where an integer belongs", _replaced(synced, "cursor", 1.0)),
        (
            "str_for_bin",
            "a document that is a str",
            _replaced(
                SnapshotChunk(PROJECT, ()),
                "entities",
                [{"entity_type": "plan", "entity_id": "p", "document": "bytes?"}],
            ),
        ),
        ("bin_for_str", "a project id that is bin", _replaced(synced, "project_id", b"p")),
        ("int_for_bool", "0 and 1 are not booleans", _replaced(Error("x", "y"), "fatal", 1)),
        (
            "project_id_too_long",
            "a project id over 64 characters",
            _replaced(synced, "project_id", long_id),
        ),
        (
            "ok_result_with_code",
            "an accepted result carrying a reject code",
            _map(
                ("t", "push_result"),
                ("push_id", 1),
                ("project_id", PROJECT),
                ("results", [{"ok": True, "entity_id": "e", "seqs": [1], "code": "x"}]),
            ),
        ),
        (
            "result_without_ok",
            "an entity result without 'ok'",
            _map(
                ("t", "push_result"),
                ("push_id", 1),
                ("project_id", PROJECT),
                ("results", [{"entity_id": "e", "seqs": [1]}]),
            ),
        ),
        (
            "unknown_conflict_status",
            "a conflict status that does not exist",
            _map(
                ("t", "conflicts"),
                ("project_id", PROJECT),
                ("conflicts", [{"conflict_id": "c", "status": "pending"}]),
            ),
        ),
        (
            "too_many_limits",
            f"more than {codec.MAX_LIMITS_KEYS} limits",
            _replaced(_WELCOME, "limits", many_limits),
        ),
        (
            "frame_too_large",
            "a frame over max_frame_bytes + max_document_bytes",
            encode(SnapshotChunk(PROJECT, (SnapshotEntity("plan", "p", bytes(200)),))),
            {"max_frame_bytes": 64, "max_document_bytes": 64},
        ),
    ]
    out: list[Vector] = []
    for direction, cases in ((CLIENT, client), (SERVER, server)):
        for case in cases:
            name, description, frame = case[0], case[1], case[2]
            limits = case[3] if len(case) == 4 else {}
            violation = _refusal(direction, frame, limits)
            out.append(
                Vector(
                    name,
                    direction,
                    description,
                    frame,
                    error=violation.code,
                    push_id=violation.push_id,
                    error_message=violation.message,
                    limits=limits,
                )
            )
    return out


# --- decoding with the codec -----------------------------------------------------------


def _limits(overrides: Mapping[str, int]) -> Limits:
    return dataclasses.replace(DEFAULT_LIMITS, **overrides)


def _decoder(direction: str) -> Callable[[bytes, Limits], Message]:
    return decode_client if direction == CLIENT else decode_server


def _refusal(direction: str, frame: bytes, limits: Mapping[str, int]) -> ProtocolViolation:
    try:
        _decoder(direction)(frame, _limits(limits))
    except ProtocolViolation as violation:
        return violation
    raise AssertionError(f"the codec accepts a frame meant to be refused: {frame[:40]!r}")


def contract_vectors() -> list[Vector]:
    """Every vector, in a fixed order; raises if the codec disagrees with one of them."""
    vectors = _valid() + _variants() + _invalid()
    for vector in vectors:
        if vector.message is None:
            continue
        decoded = _decoder(vector.direction)(vector.frame, _limits(vector.limits))
        if decoded != vector.message:
            raise AssertionError(f"{vector.name} decodes to {decoded!r}")
    return vectors


# --- rendering ---------------------------------------------------------------------------


def to_json(value: object) -> object:
    """A decoded msgpack value as JSON: bin as ``{"$bin": hex}``, everything else as is."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def _message_json(message: Message) -> object:
    """Every field of the message, as the canonical encoding holds it."""
    return to_json(msgspec.msgpack.decode(encode(message)))


def _dumps(value: object) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def _vector_json(vector: Vector) -> dict[str, object]:
    out: dict[str, object] = {
        "name": vector.name,
        "direction": vector.direction,
        "description": vector.description,
        "frame": f"{vector.name}.msgpack",
        "frame_bytes": len(vector.frame),
    }
    if vector.limits:
        out["limits"] = dict(vector.limits)
    if vector.message is not None:
        out["valid"] = True
        out["canonical"] = vector.canonical
        out["message"] = _message_json(vector.message)
    else:
        assert vector.error is not None
        out["valid"] = False
        out["error"] = {
            "code": vector.error.value,
            "push_id": vector.push_id,
            "reference_message": vector.error_message,
        }
    return out


def vector_files() -> dict[str, bytes]:
    """``contract/vectors`` as relative path -> contents."""
    files: dict[str, bytes] = {}
    index: list[dict[str, object]] = []
    for vector in contract_vectors():
        base = f"{vector.direction}/{'valid' if vector.message else 'invalid'}/{vector.name}"
        files[f"{base}.msgpack"] = vector.frame
        rendered = _vector_json(vector)
        files[f"{base}.json"] = _dumps(rendered)
        index.append({"path": base, "valid": rendered["valid"]})
    files["index.json"] = _dumps(
        {
            "description": (
                "Generated from sync/messages.py and sync/codec.py by `fieldsync contract`; "
                "do not edit. Each entry names <path>.msgpack (the frame) and <path>.json "
                "(what a decoder must make of it). Decode with the default limits "
                "(protocol.json) overridden by the vector's own 'limits'."
            ),
            "vectors": index,
        }
    )
    return files


# --- the protocol summary ----------------------------------------------------------------

_RECORDS: Final = (
    ProjectCursor,
    EntityPush,
    SnapshotEntity,
    ChangeRecord,
    ConflictRecord,
    EntityAccepted,
    EntityRejected,
)
_CLIENT_MESSAGES: Final = (Hello, Subscribe, Unsubscribe, Push)
_SERVER_MESSAGES: Final = (
    Welcome,
    ProjectError,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    Changes,
    Conflicts,
    Synced,
    PushResult,
    Error,
    Status,
)
_SCALARS: Final = {str: "str", int: "int", bytes: "bin", bool: "bool", object: "any"}


def _type(hint: Any) -> dict[str, object]:
    """A field's type from its annotation, in the vocabulary of docs/protocol.md."""
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is type(None):
        return {"type": "nil"}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return {**_type(options[0]), "nullable": True}
        return {"type": "one_of", "records": [a.__name__ for a in options]}
    if origin is tuple:
        return {"type": "array", "items": _type(args[0])}
    if origin is dict:
        return {"type": "map", "values": _type(args[1])}
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return {"type": "record", "record": hint.__name__}
    raise TypeError(f"no wire type for {hint!r}")


def _describe(cls: type[Any]) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    fields = []
    for f in msgspec.structs.fields(cls):
        entry: dict[str, object] = {"name": f.name, **_type(hints[f.name])}
        if f.default is not msgspec.NODEFAULT:
            entry["default"] = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            entry["default"] = to_json(f.default_factory())
        fields.append(entry)
    out: dict[str, object] = {"fields": fields}
    message_type = getattr(cls, "TYPE", None)
    if message_type is not None:
        out["t"] = message_type
    if cls is EntityAccepted:
        out["tag"] = {"ok": True}
    if cls is EntityRejected:
        out["tag"] = {"ok": False}
    return out


def protocol_description() -> bytes:
    """``contract/protocol.json``: message records, codes and the decoder's bounds."""
    bounds: dict[str, int] = {
        name.lower(): getattr(codec, name)
        for name in sorted(dir(codec))
        if name.startswith("MAX_") and isinstance(getattr(codec, name), int)
    }
    bounds["int_max"] = codec.INT64_MAX
    return _dumps(
        {
            "description": (
                "Generated from sync/messages.py, sync/errors.py and sync/codec.py by "
                "`fieldsync contract`; do not edit. docs/protocol.md explains every message."
            ),
            "versions": list(PROTOCOL_VERSIONS),
            "client_messages": {c.TYPE: _describe(c) for c in _CLIENT_MESSAGES},
            "server_messages": {c.TYPE: _describe(c) for c in _SERVER_MESSAGES},
            "records": {c.__name__: _describe(c) for c in _RECORDS},
            "EntityResult": ["EntityAccepted", "EntityRejected"],
            "conflict_statuses": list(CONFLICT_STATUSES),
            "server_states": list(SERVER_STATES),
            "error_codes": [code.value for code in ErrorCode],
            "close_codes": {code.name: code.value for code in CloseCode},
            "default_limits": dataclasses.asdict(DEFAULT_LIMITS),
            "decoder_bounds": bounds,
        }
    )
