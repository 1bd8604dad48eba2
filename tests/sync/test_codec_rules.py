"""The codec on msgspec: the bytes it writes, the rules checked after msgspec's own, and what
a hostile frame may cost. The codec's error messages are pinned in ``test_codec.py``."""

from __future__ import annotations

import datetime
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given

from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.sync.codec import ProtocolViolation, decode_client, decode_server, encode
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    ChangeRecord,
    Changes,
    EntityPush,
    EntityRejected,
    Message,
    Push,
    PushResult,
    Synced,
    Welcome,
)
from tests.sync.test_codec import client_messages, server_messages


def packed(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


@given(client_messages | server_messages)
def test_frames_are_what_msgpack_writes_for_the_same_tree(message: Message) -> None:
    """The encoder's choice of formats (the smallest int, str8 before str16, float64, bin)
    is msgpack-python's, which wrote every frame before: a frame never changes."""
    frame = encode(message)
    assert packed(msgpack.unpackb(frame)) == frame


def refusal(frame: bytes, decode: Any = decode_client) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as caught:
        decode(frame)
    return caught.value


PUSH = {"t": "push", "push_id": 5, "project_id": "p"}


def pairs(*items: tuple[object, object]) -> bytes:
    """A map of these pairs in this order, repeats included (a dict would merge them)."""
    assert len(items) < 16
    return bytes([0x80 | len(items)]) + b"".join(
        (v if isinstance(v, bytes) and k == "raw" else packed(k) + packed(v)) for k, v in items
    )


def test_a_key_repeated_inside_a_record_is_refused_with_its_path() -> None:
    entity = pairs(("entity_type", "a"), ("entity_id", "a"), ("changes", []), ("entity_id", "b"))
    frame = pairs(*PUSH.items(), ("raw", packed("entities") + b"\x91" + entity))
    refused = refusal(frame)
    assert refused.code is ErrorCode.INVALID_MESSAGE
    assert refused.message == "push.entities[0]: field 'entity_id' appears twice"
    assert refused.push_id == 5


def test_keys_repeated_in_free_form_maps_are_refused() -> None:
    details = pairs(("k", 1), ("k", 2))
    result = pairs(
        ("ok", False), ("entity_id", "e"), ("code", "c"), ("message", "m"),
        ("raw", packed("details") + details),
    )  # fmt: skip
    frame = pairs(
        ("t", "push_result"), ("push_id", 1), ("project_id", "p"),
        ("raw", packed("results") + b"\x91" + result),
    )  # fmt: skip
    refused = refusal(frame, decode_server)
    assert refused.message == "push_result.results[0].details: key 'k' appears twice"
    limits = pairs(("a", 1), ("a", 2))
    frame = pairs(
        ("t", "welcome"), ("version", 1), ("user_id", "u"), ("session_id", "s"),
        ("raw", packed("limits") + limits),
    )  # fmt: skip
    assert refusal(frame, decode_server).message == "welcome.limits: key 'a' appears twice"


def test_frames_other_than_the_canonical_one_still_decode() -> None:
    """Key order, integer widths and left-out defaults are free; the canonical frame is only
    what is checked fastest."""
    push = Push(5, "p", (EntityPush("activity", "a", (b"c",)),))
    reordered = packed(
        {
            "entities": [{"changes": [b"c"], "entity_id": "a", "entity_type": "activity"}],
            "push_id": 5,
            "t": "push",
            "project_id": "p",
        }
    )
    assert decode_client(reordered) == push
    wide = pairs(
        ("t", "synced"),
        ("project_id", "p"),
        ("raw", packed("cursor") + b"\xcf" + bytes(7) + b"\x09"),
    )
    assert decode_server(wide) == Synced("p", 9)


def test_free_form_details_hold_no_timestamp_and_only_str_keys() -> None:
    def push_result(details: object) -> bytes:
        return packed(
            {
                "t": "push_result",
                "push_id": 1,
                "project_id": "p",
                "results": [
                    {"ok": False, "entity_id": "e", "code": "c", "message": "m", "details": details}
                ],
            }
        )

    stamp = msgpack.Timestamp.from_datetime(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    for details in ({"when": stamp}, {"a": [stamp]}):
        refused = refusal(push_result(details), decode_server)
        assert refused.code is ErrorCode.MALFORMED_FRAME
        assert "extension types" in refused.message
    refused = refusal(push_result({"a": {(1, 2): 3}}), decode_server)
    assert refused.message == "map keys must be strings, got array"
    assert decode_server(push_result({"a": [1.5, None, b"x", {"b": True}]})) == PushResult(
        1, "p", (EntityRejected("e", "c", "m", {"a": [1.5, None, b"x", {"b": True}]}),)
    )


def test_a_welcome_names_the_limit_it_refuses() -> None:
    frame = packed(
        {"t": "welcome", "version": 1, "user_id": "u", "session_id": "s",
         "limits": {"max_frame_bytes": 1, "max_change_bytes": "big"}}
    )  # fmt: skip
    assert refusal(frame, decode_server).message == (
        "welcome.limits.max_change_bytes: expected int, got str"
    )
    assert decode_server(encode(Welcome(1, "u", "s", {"a": 1}))) == Welcome(1, "u", "s", {"a": 1})


# --- what a hostile frame may cost -----------------------------------------------------------

TINY = (DEFAULT_LIMITS.max_frame_bytes - 200) // 2  # 2-byte items filling a maximal frame


def _entities(changes: list[object]) -> list[dict[str, object]]:
    return [{"entity_type": "a", "entity_id": "b", "changes": changes}]


HOSTILE: dict[str, tuple[bytes, str]] = {
    "a bad last item": (
        packed({**PUSH, "entities": _entities([b""] * (TINY - 1) + ["x"])}),
        f"push.entities[0].changes[{TINY - 1}]: expected bytes, got str",
    ),
    "cut short": (
        packed({**PUSH, "entities": _entities([b""] * TINY)})[:-1],
        "the frame ends inside a value",
    ),
    "millions of values before 't'": (
        packed({"x": [0] * (DEFAULT_LIMITS.max_frame_bytes - 100), "t": "push"}),
        "push: unexpected field 'x' (fields: push_id, project_id, entities)",
    ),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_maximal_hostile_frame_is_refused_in_bounded_time(name: str) -> None:
    """The precise message costs no pass in Python over millions of values."""
    frame, message = HOSTILE[name]
    started = time.perf_counter()
    refused = refusal(frame)
    elapsed = time.perf_counter() - started
    assert refused.message == message
    assert refused.push_id == (None if name.startswith("millions") else 5)
    assert elapsed < 2.0  # about 0.1 s on the development machine


def test_a_maximal_frame_not_in_canonical_form_decodes_in_bounded_time() -> None:
    """The check for repeated keys leaves arrays of bytes to msgspec."""
    frame = packed({"entities": _entities([b""] * TINY), "project_id": "p", "push_id": 5,
                    "t": "push"})  # fmt: skip
    started = time.perf_counter()
    push = decode_client(frame)
    assert time.perf_counter() - started < 2.0  # about 0.15 s on the development machine
    assert isinstance(push, Push)
    assert len(push.entities[0].changes) == TINY


def test_a_server_frame_of_many_records_not_in_canonical_form_decodes() -> None:
    changes = Changes("p", tuple(ChangeRecord(i, "plan", f"e{i}", b"c") for i in range(1, 501)))
    tree = msgpack.unpackb(encode(changes))
    tree["changes"] = [dict(reversed(record.items())) for record in tree["changes"]]
    assert decode_server(packed(tree)) == changes


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [
        (  # an unknown field before an extension value
            pairs(("t", "synced"), ("seq", 1), ("raw", packed("cursor") + b"\xd4\x01\x00")),
            ErrorCode.INVALID_MESSAGE,
            "synced: unexpected field 'seq' (fields: project_id, cursor)",
        ),
        (  # an extension value before an unknown field
            pairs(("t", "synced"), ("raw", packed("cursor") + b"\xd4\x01\x00"), ("seq", 1)),
            ErrorCode.MALFORMED_FRAME,
            "byte 17: msgpack extension types are not used by this protocol",
        ),
        (  # a repeated field whose first value is wrong
            pairs(("t", "synced"), ("project_id", 1), ("project_id", "p"), ("cursor", 1)),
            ErrorCode.INVALID_MESSAGE,
            "synced.project_id: expected str, got int",
        ),
        (  # a repeated field whose second value is wrong
            pairs(("t", "synced"), ("project_id", "p"), ("project_id", 1), ("cursor", 1)),
            ErrorCode.INVALID_MESSAGE,
            "synced: field 'project_id' appears twice",
        ),
        (  # "t" again, naming another type
            pairs(("t", "synced"), ("project_id", "p"), ("t", "welcome"), ("cursor", 1)),
            ErrorCode.INVALID_MESSAGE,
            "synced: key 't' appears twice",
        ),
        (  # a key that is not UTF-8, in a map cut short, before "t" was found
            b"\x82\xa2\xef3\x01",
            ErrorCode.MALFORMED_FRAME,
            "a string is not valid UTF-8",
        ),
    ],
)
def test_of_several_faults_the_first_in_byte_order_is_named(
    frame: bytes, code: ErrorCode, message: str
) -> None:
    refused = refusal(frame, decode_server)
    assert (refused.code, refused.message) == (code, message)
