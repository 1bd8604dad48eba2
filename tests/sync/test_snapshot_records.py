"""One record of the HTTP snapshot body, through the same codec as a WebSocket frame."""

from __future__ import annotations

import msgpack
import pytest

from fieldsync.model.limits import Limits
from fieldsync.sync.codec import (
    ProtocolViolation,
    SnapshotRecord,
    decode_snapshot_record,
    encode,
    encode_snapshot_entity,
)
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    ConflictRecord,
    Conflicts,
    SnapshotBegin,
    SnapshotEnd,
    SnapshotEntity,
)
from tests.client.helpers import peak_allocation
from tests.sync.test_codec import NESTED, packed

ENTITY = SnapshotEntity("activity", "a-1", b"\x85o\x4a\x83document")
RECORDS: list[SnapshotRecord] = [
    SnapshotBegin("p", 7, 1),
    ENTITY,
    Conflicts("p", (ConflictRecord("c" * 64, "removed"),)),
    SnapshotEnd("p", 7),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_each_kind_of_record_round_trips(record: SnapshotRecord) -> None:
    data = encode_snapshot_entity(record) if isinstance(record, SnapshotEntity) else encode(record)
    assert decode_snapshot_record(data) == record
    # Keys may come in any order, "t" too.
    tree = msgpack.unpackb(data)
    assert decode_snapshot_record(packed(dict(reversed(tree.items())))) == record


def test_an_entity_record_is_the_map_the_server_has_always_written() -> None:
    written = packed({"entity_type": "activity", "entity_id": "a-1", "document": ENTITY.document})
    assert encode_snapshot_entity(ENTITY) == written


@pytest.mark.parametrize(
    ("record", "code", "message"),
    [
        (
            {"entity_type": "activity", "entity_id": "a", "document": "text"},
            ErrorCode.INVALID_MESSAGE,
            "entity.document: expected bytes, got str",
        ),
        (
            {"entity_type": "activity", "entity_id": "a" * 65, "document": b""},
            ErrorCode.INVALID_MESSAGE,
            "entity.entity_id: at most 64 characters, got 65",
        ),
        (
            {"entity_type": "activity", "entity_id": "a"},
            ErrorCode.INVALID_MESSAGE,
            "entity: missing field 'document'",
        ),
        (
            {"t": "changes", "project_id": "p", "changes": []},
            ErrorCode.UNKNOWN_MESSAGE_TYPE,
            "unknown message type 'changes'; a snapshot body holds snapshot_begin, conflicts, "
            "snapshot_end",
        ),
        (
            {"project_id": "p", "cursor": -1, "entity_count": 0, "t": "snapshot_begin"},
            ErrorCode.INVALID_MESSAGE,
            "snapshot_begin.cursor: must be >= 0, got -1",
        ),
        ([1, 2], ErrorCode.MALFORMED_FRAME, "a frame must hold one msgpack map, got array"),
    ],
)
def test_a_bad_record_is_refused_with_its_path(
    record: object, code: ErrorCode, message: str
) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        decode_snapshot_record(packed(record))
    assert caught.value.code is code
    assert caught.value.message == message


def test_a_record_holds_at_most_one_document_and_its_frame() -> None:
    limits = Limits(max_frame_bytes=64, max_document_bytes=1024)
    assert decode_snapshot_record(encode_snapshot_entity(ENTITY), limits) == ENTITY
    big = SnapshotEntity("activity", "a-1", bytes(1100))
    with pytest.raises(ProtocolViolation) as caught:
        decode_snapshot_record(encode_snapshot_entity(big), limits)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


ENTITY_HEAD = b"".join(packed(part) for part in ("entity_type", "activity", "entity_id", "a-1"))


@pytest.mark.parametrize(
    "record",
    [
        b"\x83" + ENTITY_HEAD + packed("document") + NESTED,
        b"\x83" + ENTITY_HEAD + packed("document") + b"\xc6\xff\xff\xff\xff",
        b"\x82\xa1t\xa9conflicts\xa9conflicts" + NESTED,
        b"\x82\xa1t\xa9conflicts\xa9conflicts\xdd\xff\xff\xff\xff" + b"\x80" * 100,
        b"\x81\xa1x" + NESTED + b"\xa1t\xaesnapshot_begin",
        b"\xdf\xff\xff\xff\xff" + b"\xa1k\xc0" * 100,
    ],
)
def test_a_hostile_record_is_refused_in_bounded_memory(record: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        decode_snapshot_record(record)
    assert peak_allocation(lambda: decode_snapshot_record(record)) < 256 * 1024
