"""The codec: round trips, the exact wire shape, and every way a frame can be refused."""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.codec import (
    MAX_CLIENT_ID_CHARS,
    MAX_ENTITY_ID_CHARS,
    MAX_ENTITY_TYPE_CHARS,
    MAX_HELLO_PROJECTS,
    MAX_PROJECT_ID_CHARS,
    MAX_TOKEN_CHARS,
    ProtocolViolation,
    decode_client,
    decode_server,
    encode,
    max_server_frame_bytes,
)
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    CONFLICT_STATUSES,
    ChangeRecord,
    Changes,
    ClientMessage,
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
    ServerMessage,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotEntity,
    Subscribe,
    Synced,
    Unsubscribe,
    Welcome,
)

CLIENT_TYPES = ("hello", "subscribe", "unsubscribe", "push")
SERVER_TYPES = (
    "welcome",
    "project_error",
    "snapshot_begin",
    "snapshot_chunk",
    "snapshot_end",
    "changes",
    "synced",
    "push_result",
    "error",
)

# --- strategies: every message, valid --------------------------------------------------------

uints = st.integers(min_value=0, max_value=2**63 - 1)
optional_uints = st.none() | uints
chars = st.characters(codec="utf-8")


def strings(max_size: int) -> st.SearchStrategy[str]:
    return st.text(chars, max_size=max_size)


project_ids = strings(MAX_PROJECT_ID_CHARS)
entity_types = strings(MAX_ENTITY_TYPE_CHARS)
entity_ids = strings(MAX_ENTITY_ID_CHARS)
blobs = st.binary(max_size=64)
codes = strings(64)
texts = strings(200)

project_cursors = st.builds(ProjectCursor, project_ids, optional_uints)
details = st.dictionaries(
    strings(16),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False)
        | strings(20)
        | blobs,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings(8), inner, max_size=4),
        max_leaves=12,
    ),
    max_size=4,
)

client_messages: st.SearchStrategy[ClientMessage] = st.one_of(
    st.builds(
        Hello,
        versions=st.lists(uints, max_size=4).map(tuple),
        token=strings(300),
        client_id=strings(MAX_CLIENT_ID_CHARS),
        projects=st.lists(project_cursors, max_size=5, unique_by=lambda p: p.project_id).map(tuple),
        outbox_age_ms=optional_uints,
    ),
    st.builds(Subscribe, project_cursors),
    st.builds(Unsubscribe, project_ids),
    st.builds(
        Push,
        uints,
        project_ids,
        st.lists(
            st.builds(EntityPush, entity_types, entity_ids, st.lists(blobs, max_size=4).map(tuple)),
            max_size=5,
        ).map(tuple),
    ),
)

entity_results = st.builds(
    EntityAccepted, entity_ids, st.lists(uints, max_size=4).map(tuple)
) | st.builds(EntityRejected, entity_ids, codes, texts, details)

server_messages: st.SearchStrategy[ServerMessage] = st.one_of(
    st.builds(
        Welcome, uints, strings(128), strings(128), st.dictionaries(strings(64), uints, max_size=8)
    ),
    st.builds(ProjectError, project_ids, codes, texts),
    st.builds(SnapshotBegin, project_ids, uints, uints),
    st.builds(
        SnapshotChunk,
        project_ids,
        st.lists(st.builds(SnapshotEntity, entity_types, entity_ids, blobs), max_size=4).map(tuple),
    ),
    st.builds(SnapshotEnd, project_ids, uints),
    st.builds(
        Changes,
        project_ids,
        st.lists(st.builds(ChangeRecord, uints, entity_types, entity_ids, blobs), max_size=4).map(
            tuple
        ),
    ),
    st.builds(
        Conflicts,
        project_ids,
        st.lists(
            st.builds(
                ConflictRecord,
                strings(64),
                st.sampled_from(CONFLICT_STATUSES),
                codes,
                st.lists(entity_ids, max_size=4).map(tuple),
                st.lists(strings(64), max_size=4).map(tuple),
                uints,
                optional_uints,
                details,
            ),
            max_size=4,
        ).map(tuple),
    ),
    st.builds(Synced, project_ids, uints),
    st.builds(PushResult, uints, project_ids, st.lists(entity_results, max_size=4).map(tuple)),
    st.builds(Error, codes, texts, st.booleans(), optional_uints),
)

# --- strategies: anything msgpack can carry ------------------------------------------------

msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | strings(20)
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(strings(10) | st.integers(0, 9), inner, max_size=5)
    ),
    max_leaves=20,
)
FIELD_NAMES = sorted(
    {
        "versions", "token", "client_id", "projects", "outbox_age_ms", "project", "project_id",
        "cursor", "push_id", "entities", "entity_type", "entity_id", "changes", "version",
        "user_id", "session_id", "limits", "code", "message", "entity_count", "document",
        "seq", "change", "results", "ok", "seqs", "details", "fatal",
    }
)  # fmt: skip
typed_maps = st.builds(
    lambda t, fields: {"t": t, **fields},
    st.sampled_from(CLIENT_TYPES + SERVER_TYPES + ("nope",)),
    st.dictionaries(st.sampled_from(FIELD_NAMES), msgpack_values, max_size=6),
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid message with one value somewhere inside replaced by something random."""
    message = draw(client_messages | server_messages)
    tree = msgpack.unpackb(encode(message))

    def mutate(node: Any) -> Any:
        if isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            return {**node, key: mutate(node[key])}
        if isinstance(node, list) and node and draw(st.booleans()):
            index = draw(st.integers(0, len(node) - 1))
            return [*node[:index], mutate(node[index]), *node[index + 1 :]]
        return draw(msgpack_values)

    packed: bytes = msgpack.packb(mutate(tree), use_bin_type=True)
    return packed


def packed(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


hostile_frames = (
    st.binary(max_size=200)
    | st.text(max_size=20)
    | msgpack_values.map(packed)
    | typed_maps.map(packed)
    | mutated_messages()
    | (client_messages | server_messages)
    .map(encode)
    .flatmap(lambda frame: st.integers(0, len(frame) - 1).map(lambda cut: frame[:cut]))
)

# --- round trips and the wire shape ---------------------------------------------------------


@given(client_messages)
def test_client_messages_round_trip(message: ClientMessage) -> None:
    assert decode_client(encode(message)) == message


@given(server_messages)
def test_server_messages_round_trip(message: ServerMessage) -> None:
    assert decode_server(encode(message)) == message


@given(client_messages | server_messages)
def test_encoding_is_deterministic_and_puts_the_type_first(message: Message) -> None:
    frame = encode(message)
    assert encode(message) == frame
    assert next(iter(msgpack.unpackb(frame))) == "t"


def test_the_wire_shape_is_plain_maps_arrays_and_bin() -> None:
    push = Push(7, "p1", (EntityPush("activity", "a1", (b"\x85o", b"\x01")),))
    assert msgpack.unpackb(encode(push)) == {
        "t": "push",
        "push_id": 7,
        "project_id": "p1",
        "entities": [
            {"entity_type": "activity", "entity_id": "a1", "changes": [b"\x85o", b"\x01"]}
        ],
    }
    result = PushResult(
        7,
        "p1",
        (EntityAccepted("a1", (41, 42)), EntityRejected("a2", "schema_violation", "no", {"n": 1})),
    )
    assert msgpack.unpackb(encode(result)) == {
        "t": "push_result",
        "push_id": 7,
        "project_id": "p1",
        "results": [
            {"ok": True, "entity_id": "a1", "seqs": [41, 42]},
            {"ok": False, "entity_id": "a2", "code": "schema_violation", "message": "no",
             "details": {"n": 1}},
        ],
    }  # fmt: skip
    hello = Hello((1,), "tok", "c", (ProjectCursor("p1", None),))
    assert msgpack.unpackb(encode(hello)) == {
        "t": "hello",
        "versions": [1],
        "token": "tok",
        "client_id": "c",
        "projects": [{"project_id": "p1", "cursor": None}],
        "outbox_age_ms": None,
        "client_version": None,
    }
    # Strings are msgpack str and payloads msgpack bin, never the other way round.
    frame = encode(Changes("p", (ChangeRecord(1, "plan", "x", b"c"),)))
    assert frame.endswith(b"\xa6change\xc4\x01c")


def test_fields_with_defaults_may_be_left_out_and_keys_come_in_any_order() -> None:
    frame = packed({"client_id": "c", "token": "tok", "versions": [1], "t": "hello"})
    assert decode_client(frame) == Hello((1,), "tok", "c", (), None)
    assert decode_server(packed({"message": "m", "code": "x", "t": "error"})) == Error("x", "m")
    rejected = {"ok": False, "entity_id": "e", "code": "c", "message": "m"}
    result = packed({"t": "push_result", "push_id": 1, "project_id": "p", "results": [rejected]})
    assert decode_server(result) == PushResult(1, "p", (EntityRejected("e", "c", "m"),))


# --- hostile input never escapes as anything but ProtocolViolation ---------------------------


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_frames)
def test_any_frame_decodes_or_raises_protocol_violation(frame: bytes | str) -> None:
    for decode in (decode_client, decode_server):
        refused = None
        try:
            decode(frame)
        except ProtocolViolation as violation:
            refused = violation
        if refused is not None:
            assert isinstance(refused.code, ErrorCode)
            assert refused.message


def test_types_given_a_frame_that_is_not_bytes_are_refused_too() -> None:
    # Other buffer types are read like bytes, whatever the signature says.
    frame = encode(Unsubscribe("p"))
    assert decode_client(bytearray(frame)) == Unsubscribe("p")  # type: ignore[arg-type]
    assert decode_client(memoryview(frame)) == Unsubscribe("p")  # type: ignore[arg-type]
    with pytest.raises(ProtocolViolation) as caught:
        decode_client(42)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.MALFORMED_FRAME


# --- each violation, its code and where it was ---------------------------------------------


def violation(frame: bytes | str, limits: Limits = DEFAULT_LIMITS) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as caught:
        decode_client(frame, limits)
    return caught.value


HELLO = {"t": "hello", "versions": [1], "token": "tok", "client_id": "c", "projects": []}


def push(*entities: dict[str, object], **fields: object) -> bytes:
    return packed({"t": "push", "push_id": 5, "project_id": "p", "entities": list(entities),
                   **fields})  # fmt: skip


def entity(**fields: object) -> dict[str, object]:
    return {"entity_type": "activity", "entity_id": "a", "changes": [b"c"], **fields}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("a text frame", "text frames"),
        (b"", "empty"),
        (b"\xc1", "0xc1"),
        (b"\x81\xa1t", "ends inside"),
        (packed(HELLO)[:-1], "ends inside"),
        (packed(HELLO) + b"\x00", "1 bytes follow"),
        (packed([1, 2, 3]), "one msgpack map, got array"),
        (packed("hello"), "one msgpack map, got str"),
        (packed({"t": "hello", 1: 2}), "keys must be strings"),
        (packed({b"t": "hello"}), "keys must be strings, got bytes"),
        (packed({**HELLO, "token": msgpack.ExtType(1, b"x")}), "extension types"),
        (packed({**HELLO, "token": msgpack.Timestamp(1)}), "extension types"),
        (b"\x81\xa1t\xa2\xff\xfe", "not valid UTF-8"),
        (b"\x81\xa1x" + b"\x91" * 2000 + b"\xc0", "nested too deeply"),
    ],
)
def test_malformed_frames(frame: bytes | str, message: str) -> None:
    refused = violation(frame)
    assert refused.code is ErrorCode.MALFORMED_FRAME
    assert message in refused.message


def test_frame_length_is_checked_before_anything_is_unpacked() -> None:
    limits = Limits(max_frame_bytes=64)
    refused = violation(b"\xc1" * 65, limits)
    assert refused.code is ErrorCode.FRAME_TOO_LARGE
    assert "65" in refused.message
    assert "64" in refused.message
    assert violation(b"\xc1" * 64, limits).code is ErrorCode.MALFORMED_FRAME


def test_a_push_too_large_to_decode_still_names_its_push_id() -> None:
    limits = Limits(max_frame_bytes=256)
    big = (EntityPush("location", "loc-1", (b"x" * 300,)),)
    for frame in (
        encode(Push(41, "p", big)),
        packed({"entities": [], "project_id": "p", "push_id": 42, "t": "push", "pad": "y" * 300}),
    ):
        refused = violation(frame, limits)
        assert refused.code is ErrorCode.FRAME_TOO_LARGE
        assert refused.push_id in (41, 42)
        assert refused.to_error().push_id == refused.push_id
    not_a_push = packed({"t": "subscribe", "push_id": 7, "pad": "y" * 300})
    assert violation(not_a_push, limits).push_id is None
    assert violation(b"\xc1" * 300, limits).push_id is None


def test_server_frames_may_carry_one_whole_document() -> None:
    limits = Limits(max_frame_bytes=1024, max_document_bytes=4096)
    chunk = SnapshotChunk("p", (SnapshotEntity("plan", "x", b"d" * 4000),))
    assert decode_server(encode(chunk), limits) == chunk
    assert max_server_frame_bytes(limits) == 1024 + 4096
    with pytest.raises(ProtocolViolation) as caught:
        decode_server(b"\x80" * (1024 + 4096 + 1), limits)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolViolation) as caught:
        decode_client(encode(chunk), limits)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def test_unknown_types_name_the_known_ones() -> None:
    refused = violation(packed({"t": "teleport", "where": "mars"}))
    assert refused.code is ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert "'teleport'" in refused.message
    for name in CLIENT_TYPES:
        assert name in refused.message
    # A server message is not a client message, and the other way round.
    assert violation(encode(Synced("p", 1))).code is ErrorCode.UNKNOWN_MESSAGE_TYPE
    with pytest.raises(ProtocolViolation) as caught:
        decode_server(encode(Unsubscribe("p")))
    assert caught.value.code is ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert "welcome" in caught.value.message


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (packed({"versions": [1]}), "no 't' key"),
        (packed({"t": 1}), "'t' must be a string"),
        (b"\x82\xa1t\xa5hello\xa1t\xa5hello", "hello: key 't' appears twice"),
        (
            b"\x84\xa1t\xabunsubscribe\xaaproject_id\xa1p\xaaproject_id\xa1q",
            "unsubscribe: field 'project_id' appears twice",
        ),
        (packed({**HELLO, "extra": 1}), "hello: unexpected field 'extra'"),
        (packed({"t": "hello", "versions": [1], "token": "x"}), "hello: missing field 'client_id'"),
        (packed({**HELLO, "versions": [True]}), "hello.versions[0]: expected int, got bool"),
        (packed({**HELLO, "versions": [1.0]}), "hello.versions[0]: expected int, got float"),
        (packed({**HELLO, "versions": [-1]}), "hello.versions[0]: must be >= 0, got -1"),
        (packed({**HELLO, "versions": [2**63]}), "hello.versions[0]: must fit in a signed 64"),
        (packed({**HELLO, "versions": 1}), "hello.versions: expected array, got int"),
        (packed({**HELLO, "token": b"tok"}), "hello.token: expected str, got bytes"),
        (packed({**HELLO, "outbox_age_ms": -5}), "hello.outbox_age_ms: must be >= 0"),
        (
            packed({**HELLO, "token": "x" * (MAX_TOKEN_CHARS + 1)}),
            f"hello.token: at most {MAX_TOKEN_CHARS} characters, got {MAX_TOKEN_CHARS + 1}",
        ),
        (
            packed({**HELLO, "client_id": "é" * (MAX_CLIENT_ID_CHARS + 1)}),
            f"hello.client_id: at most {MAX_CLIENT_ID_CHARS} characters",
        ),
        (
            packed({**HELLO, "projects": [{"project_id": "p" * 65, "cursor": None}]}),
            "hello.projects[0].project_id: at most 64 characters",
        ),
        (
            packed({**HELLO, "projects": [{"project_id": "p", "cursor": None}] * 2}),
            "hello.projects[1].project_id: the same project as [0]",
        ),
        (
            packed({**HELLO, "projects": [{"project_id": f"p{i}", "cursor": None}
                                          for i in range(MAX_HELLO_PROJECTS + 1)]}),
            f"hello.projects: at most {MAX_HELLO_PROJECTS} items, got {MAX_HELLO_PROJECTS + 1}",
        ),
        (
            packed({**HELLO, "projects": [{"project_id": "p"}]}),
            "hello.projects[0]: missing field 'cursor'",
        ),
        (
            packed({"t": "subscribe", "project": {"project_id": "p", "cursor": "7"}}),
            "subscribe.project.cursor: expected int, got str",
        ),
        (packed({"t": "push", "push_id": 9, "project_id": 5}), "push.project_id: expected str"),
        (push(entity(), entity(changes=[b"ok", "no"])),
         "push.entities[1].changes[1]: expected bytes, got str"),
        (push(entity(changes=[b"ok", [b"x"]])),
         "push.entities[0].changes[1]: expected bytes, got array"),
        (push(entity(changes=b"c")), "push.entities[0].changes: expected array, got bytes"),
        (push(entity(entity_type="t" * 65)), "push.entities[0].entity_type: at most 64"),
        (push(entity(entity_id="e" * 65)), "push.entities[0].entity_id: at most 64"),
        (push(entity(entity_id=None)), "push.entities[0].entity_id: expected str, got nil"),
        (push(entity(extra=1)), "push.entities[0]: unexpected field 'extra'"),
        (push(push_id=None), "push.push_id: expected int, got nil"),
    ],
)  # fmt: skip
def test_invalid_messages_name_the_field(frame: bytes, message: str) -> None:
    refused = violation(frame)
    assert refused.code is ErrorCode.INVALID_MESSAGE
    assert message in refused.message, refused.message


def test_bulk_reading_falls_back_to_a_precise_reading_for_every_kind_of_bad_item() -> None:
    for bad, kind in [
        ("s", "str"), (1, "int"), (None, "nil"), ([], "array"), ({}, "map"), (1.5, "float"),
    ]:  # fmt: skip
        refused = violation(push(entity(changes=[b"a"] * 5 + [bad] + [b"b"] * 5)))
        assert refused.message == f"push.entities[0].changes[5]: expected bytes, got {kind}"
    ext = violation(push(entity(changes=[b"a", msgpack.ExtType(3, b"")])))
    assert ext.code is ErrorCode.MALFORMED_FRAME
    cut = push(entity(changes=[b"a", b"b"]))
    assert violation(cut[:-1]).code is ErrorCode.MALFORMED_FRAME


def test_too_many_entities_carries_the_push_id_wherever_it_comes() -> None:
    limit = DEFAULT_LIMITS.max_entities_per_batch
    assert decode_client(push(*[entity()] * limit)) is not None
    for frame in (
        push(*[entity()] * (limit + 1)),
        packed({"t": "push", "project_id": "p", "entities": [entity()] * (limit + 1),
                "push_id": 5}),
    ):  # fmt: skip
        refused = violation(frame)
        assert refused.code is ErrorCode.TOO_MANY_ENTITIES
        assert refused.push_id == 5
        assert f"at most {limit}" in refused.message
        assert refused.to_error() == Error("too_many_entities", refused.message, False, 5)


def test_a_refused_push_names_its_push_id_when_it_can_be_read() -> None:
    assert violation(push(entity(entity_id=None))).push_id == 5
    assert violation(push(entity(changes=[b"a", "b"]))).push_id == 5
    assert violation(push(entity())[:-1]).push_id == 5
    assert violation(push(entity(), push_id=True)).push_id is None
    late = packed({"t": "push", "project_id": 1, "entities": [], "push_id": 8})
    assert violation(late).push_id == 8
    assert violation(encode(Unsubscribe("p" * 65))).push_id is None


def test_per_entity_change_counts_and_sizes_are_left_to_the_store() -> None:
    limits = Limits(max_changes_per_entity=2, max_change_bytes=4)
    many = decode_client(push(entity(changes=[b"long change"] * 3)), limits)
    assert isinstance(many, Push)
    assert many.entities[0].changes == (b"long change",) * 3


def test_server_message_violations() -> None:
    cases = [
        (packed({"t": "welcome", "version": 1, "user_id": "u", "session_id": "s",
                 "limits": {"max_frame_bytes": -1}}),
         "welcome.limits.max_frame_bytes: must be >= 0"),
        (packed({"t": "push_result", "push_id": 1, "project_id": "p",
                 "results": [{"entity_id": "e", "seqs": []}]}),
         "push_result.results[0]: missing field 'ok'"),
        (packed({"t": "push_result", "push_id": 1, "project_id": "p",
                 "results": [{"ok": True, "entity_id": "e", "seqs": [1], "code": "x"}]}),
         "push_result.results[0]: unexpected field 'code' in a result with ok=True"),
        (packed({"t": "push_result", "push_id": 1, "project_id": "p",
                 "results": [{"ok": False, "entity_id": "e", "message": "m"}]}),
         "push_result.results[0]: missing field 'code'"),
        (packed({"t": "push_result", "push_id": 1, "project_id": "p",
                 "results": [{"ok": False, "entity_id": "e", "code": "c", "message": "m",
                              "details": {"a": [{"b": {1: 2}}]}}]}), "keys must be strings"),
        (packed({"t": "changes", "project_id": "p",
                 "changes": [{"seq": 1, "entity_type": "a", "entity_id": "b", "change": "c"}]}),
         "changes.changes[0].change: expected bytes, got str"),
        (packed({"t": "error", "code": "c", "message": "m", "fatal": 1}),
         "error.fatal: expected bool, got int"),
    ]  # fmt: skip
    for frame, message in cases:
        with pytest.raises(ProtocolViolation) as caught:
            decode_server(frame)
        assert message in caught.value.message, caught.value.message


def test_deep_details_are_refused() -> None:
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    frame = packed(
        {
            "t": "push_result",
            "push_id": 1,
            "project_id": "p",
            "results": [
                {"ok": False, "entity_id": "e", "code": "c", "message": "m", "details": {"d": deep}}
            ],
        }
    )
    with pytest.raises(ProtocolViolation) as caught:
        decode_server(frame)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert "push_result.results[0].details.d[0][0]" in caught.value.message


# --- a small frame cannot make the decoder allocate a lot ------------------------------------


NESTED = b"\xdc\xff\xff" * 1000  # 3 kB of nested arrays, each claiming 65,535 items


@pytest.mark.parametrize(
    ("decode", "frame"),
    [
        (decode_client, b"\x82\xa1t\xa4push\xa8entities" + NESTED),
        (decode_client, b"\x82\xa1t\xa4push\xaaproject_id" + NESTED),
        (decode_client, b"\x82\xa1t\xa5hello\xa8projects" + b"\xdd\xff\xff\xff\xff"),
        (decode_client, b"\x82\xa1x" + NESTED + b"\xa1t\xa4push"),  # skipped on the way to "t"
        (decode_client, b"\x82\xa1t\xa4push\xa8entities\x91\x83" + b"\xa7changes" + NESTED),
        (decode_server, b"\x82\xa1t\xa7changes\xa7changes" + NESTED),
        (decode_server, b"\x82\xa1t\xa7welcome\xa6limits" + b"\xdf\xff\xff\xff\xff"),
    ],
)
def test_claimed_sizes_allocate_nothing(decode: Any, frame: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode(frame)
    assert peak_allocation(lambda: decode(frame)) < 256 * 1024


def test_why_the_decoder_never_lets_msgpack_build_containers() -> None:
    def unpack() -> None:
        msgpack.unpackb(b"\x82\xa1t\xa4push\xa8entities" + NESTED, max_array_len=2**16)

    assert peak_allocation(unpack) > 50 * 2**20  # 3 kB in, about 80 MB reserved


def peak_allocation(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(Exception):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_maximal_frame_of_tiny_items_decodes_in_bounded_time() -> None:
    count = (DEFAULT_LIMITS.max_frame_bytes - 200) // 2
    frame = push(entity(changes=[b""] * count))
    started = time.perf_counter()
    message = decode_client(frame)
    elapsed = time.perf_counter() - started
    assert isinstance(message, Push)
    assert len(message.entities[0].changes) == count
    assert elapsed < 2.0  # about 0.2 s on the development machine
