"""parse_change against real Automerge changes, hand-built chunks and hostile bytes."""

import hashlib
import tracemalloc
import zlib
from collections.abc import Callable
from typing import NamedTuple

import pytest
from automerge.core import ROOT, Document, ObjType, ScalarType, ScalarValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldsync.model.automerge_format.changes import (
    MAX_CHANGE_BYTES,
    ChangeFormatError,
    ChangeHeader,
    parse_change,
)
from fieldsync.model.automerge_format.leb128 import (
    LEB128Error,
    decode_sleb128,
    decode_uleb128,
    encode_uleb128,
)

MAGIC = b"\x85\x6f\x4a\x83"
ACTOR = b"\x01" * 16
LONG_TEXT = "x" * 300  # large enough that the library deflates the change


# --- helpers -------------------------------------------------------------------------------


def sleb(value: int) -> bytes:
    """Signed LEB128, written independently of the decoder it checks."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def chunk(contents: bytes) -> bytes:
    """An uncompressed change chunk around `contents`, with its correct checksum."""
    body = b"\x01" + encode_uleb128(len(contents)) + contents
    return MAGIC + hashlib.sha256(body).digest()[:4] + body


def raw_deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(wbits=-15)
    return deflater.compress(data) + deflater.flush()


def deflated(contents: bytes, stream: bytes | None = None) -> bytes:
    """A compressed change chunk: checksum of the plain chunk, deflated contents."""
    checksum = chunk(contents)[4:8]
    stream = raw_deflate(contents) if stream is None else stream
    return MAGIC + checksum + b"\x02" + encode_uleb128(len(stream)) + stream


def uncompressed(data: bytes) -> bytes:
    """The type-1 chunk equivalent to `data`, rebuilt by the test itself."""
    if data[8] == 1:
        return data
    _, start = decode_uleb128(data, 9)
    contents = zlib.decompress(data[start:], wbits=-15)
    return MAGIC + data[4:8] + b"\x01" + encode_uleb128(len(contents)) + contents


def assert_matches_library(
    data: bytes,
    hash_: bytes,
    deps: list[bytes],
    actor: bytes,
    seq: int,
    start_op: int,
    max_op: int | None = None,
) -> ChangeHeader:
    header = parse_change(data)
    assert header.hash == hash_
    assert list(header.deps) == deps
    assert header.actor == actor
    assert header.seq == seq
    assert header.start_op == start_op
    assert header.data is data
    if max_op is not None:
        assert header.op_count == max_op - start_op + 1
    return header


def put(doc: Document, key: str, stype: ScalarType, value: ScalarValue) -> None:
    with doc.transaction() as tx:
        tx.put(ROOT, key, stype, value)


def last(doc: Document) -> bytes:
    change = doc.get_last_local_change()
    assert change is not None
    return change.bytes


def _base_change() -> bytes:
    doc = Document(actor_id=ACTOR)
    put(doc, "title", ScalarType.Str, "hello")
    return last(doc)


BASE = _base_change()
# The header of BASE split into its fields, so tests can swap one and keep the rest valid.
FIELDS = {
    "deps": b"\x00",
    "actor": b"\x10" + ACTOR,
    "seq": b"\x01",
    "start_op": b"\x01",
    "time": b"\x00",
    "message": b"\x00",
    "other_actors": b"\x00",
    "ops": BASE[10 + 23 :],
}


def contents(**fields: bytes) -> bytes:
    return b"".join({**FIELDS, **fields}.values())


def _corpus() -> list[bytes]:
    a = Document(actor_id=ACTOR)
    put(a, "title", ScalarType.Str, "hello")
    b = a.fork()
    b.set_actor(b"\x02" * 16)
    put(b, "big", ScalarType.Str, LONG_TEXT)
    put(a, "title", ScalarType.Str, "bye")
    a.merge(b)
    with a.transaction() as tx:
        tx.delete(ROOT, "big")
    return [change.bytes for change in a.get_changes([])]


CORPUS = _corpus()
CORPUS_PLAIN = [data for data in CORPUS if data[8] == 1]
CORPUS_DEFLATED = [data for data in CORPUS if data[8] == 2]


# --- real changes --------------------------------------------------------------------------


def test_the_field_split_rebuilds_the_library_change() -> None:
    assert chunk(contents()) == BASE
    assert parse_change(BASE).actor == ACTOR


def test_small_change_matches_the_library() -> None:
    doc = Document()
    put(doc, "title", ScalarType.Str, "hello")
    change = doc.get_last_local_change()
    assert change is not None
    assert change.bytes[8] == 1
    header = assert_matches_library(change.bytes, change.hash, change.deps, change.actor_id, 1, 1)
    assert header.message is None
    assert header.time_ms == 0


def test_large_change_is_deflated_and_hashes_as_its_plain_form() -> None:
    doc = Document()
    put(doc, "title", ScalarType.Str, "hello")
    put(doc, "big", ScalarType.Str, LONG_TEXT)
    change = doc.get_last_local_change()
    assert change is not None
    assert change.bytes[8] == 2
    assert change.raw_bytes[8] == 1
    compressed = assert_matches_library(
        change.bytes, change.hash, change.deps, change.actor_id, 2, 2
    )
    plain = assert_matches_library(
        change.raw_bytes, change.hash, change.deps, change.actor_id, 2, 2
    )
    assert compressed.data == change.bytes
    assert plain.data == change.raw_bytes
    assert uncompressed(change.bytes) == change.raw_bytes


def test_merge_of_two_actors_has_two_deps_and_other_actors() -> None:
    a = Document(actor_id=b"\x0a" * 16)
    with a.transaction() as tx:
        tx.put(ROOT, "k", ScalarType.Str, "v")
        items = tx.put_object(ROOT, "items", ObjType.List)
        tx.insert(items, 0, ScalarType.Int, 1)
    b = a.fork()
    b.set_actor(b"\x0b" * 16)
    with b.transaction() as tx:
        tx.delete(ROOT, "k")  # refers to an op of actor a: a becomes an "other actor"
        tx.insert(items, 1, ScalarType.Int, 2)
    put(a, "k", ScalarType.Str, "w")
    a.merge(b)
    put(a, "after", ScalarType.Boolean, True)
    changes = a.get_changes([])
    assert any(len(change.deps) == 2 for change in changes)
    assert any(change.other_actor_ids for change in changes)
    for change in changes:
        assert_matches_library(
            change.bytes, change.hash, change.deps, change.actor_id, change.seq, change.start_op
        )


@given(actor=st.binary(min_size=1, max_size=64))
def test_any_actor_id_up_to_64_bytes(actor: bytes) -> None:
    doc = Document(actor_id=actor)
    put(doc, "x", ScalarType.Int, 1)
    assert parse_change(last(doc)).actor == actor


def test_message_and_time_read_as_the_library_reads_them() -> None:
    # The core API cannot set either, so the change is rebuilt with them and loaded.
    time_ms = 1_700_000_000_123
    text = "Relocated the crane ✓"
    encoded = text.encode()
    data = chunk(contents(time=sleb(time_ms), message=encode_uleb128(len(encoded)) + encoded))
    header = parse_change(data)
    assert (header.message, header.time_ms) == (text, time_ms)
    [loaded] = Document.load(data).get_changes([])
    assert loaded.hash == header.hash
    assert loaded.message == text
    assert round(loaded.timestamp.timestamp() * 1000) == time_ms
    assert parse_change(deflated(contents(time=sleb(-1)))).time_ms == -1


def test_a_chunk_deflated_here_is_the_same_change_to_the_library() -> None:
    data = deflated(contents())
    header = parse_change(data)
    assert header.hash == parse_change(BASE).hash
    assert Document.load(data).get_heads() == [header.hash]


SCALARS: st.SearchStrategy[tuple[ScalarType, ScalarValue]] = st.one_of(
    st.tuples(st.just(ScalarType.Int), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(ScalarType.Uint), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(ScalarType.Str), st.text(max_size=400)),
    st.tuples(st.just(ScalarType.Bytes), st.binary(max_size=400)),
    st.tuples(st.just(ScalarType.F64), st.floats(allow_nan=False)),
    st.tuples(st.just(ScalarType.Boolean), st.booleans()),
    st.tuples(st.just(ScalarType.Null), st.none()),
)


class Edit(NamedTuple):
    kind: str
    who: int
    key: str
    pos: int
    delete: int
    text: str
    scalar: tuple[ScalarType, ScalarValue]
    other: int


WHO = st.integers(0, 2)
EDITS = st.lists(
    st.builds(
        Edit,
        kind=st.sampled_from(["put", "delete", "splice", "insert", "merge"]),
        who=WHO,
        key=st.sampled_from(["a", "b", "c"]),
        pos=st.integers(0, 99),
        delete=st.integers(0, 5),
        text=st.text(max_size=50),
        scalar=SCALARS,
        other=WHO,
    ),
    max_size=15,
)


def apply_edit(docs: list[Document], edit: Edit) -> None:
    doc = docs[edit.who]
    if edit.kind == "merge":
        if edit.other != edit.who:  # a document cannot merge itself (the binding refuses)
            doc.merge(docs[edit.other])
        return
    notes, tasks = doc.get(ROOT, "notes"), doc.get(ROOT, "tasks")
    assert notes is not None
    assert tasks is not None
    with doc.transaction() as tx:
        if edit.kind == "put":
            tx.put(ROOT, edit.key, *edit.scalar)
        elif edit.kind == "delete" and edit.key in doc.keys(ROOT):
            tx.delete(ROOT, edit.key)
        elif edit.kind == "splice":
            length = doc.length(notes[1])
            pos = edit.pos % (length + 1)
            delete = min(edit.delete, length - pos)
            tx.splice_text(notes[1], pos, delete, edit.text)  # type: ignore[attr-defined]
        elif edit.kind == "insert":
            tx.insert(tasks[1], edit.pos % (doc.length(tasks[1]) + 1), *edit.scalar)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=EDITS)
def test_every_change_of_random_edits_matches_the_library(edits: list[Edit]) -> None:
    base = Document(actor_id=b"\x00" * 16)
    with base.transaction() as tx:
        tx.put_object(ROOT, "notes", ObjType.Text)
        tx.put_object(ROOT, "tasks", ObjType.List)
    docs = []
    for n in range(3):
        doc = base.fork()
        doc.set_actor(bytes([n + 1]) * 16)
        docs.append(doc)
    for edit in edits:
        apply_edit(docs, edit)
    for other in docs[1:]:
        docs[0].merge(other)
    for change in docs[0].get_changes([]):
        assert_matches_library(
            change.bytes,
            change.hash,
            change.deps,
            change.actor_id,
            change.seq,
            change.start_op,
            change.max_op,
        )
        assert parse_change(change.raw_bytes).hash == change.hash


# --- hostile bytes -------------------------------------------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    mutated = bytearray(data)
    mutated[index] ^= 0x01
    return bytes(mutated)


REJECTED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "too short"),
    "wrong magic": (b"\x00" + BASE[1:], "wrong magic"),
    "truncated": (BASE[:-1], "declares 55 bytes of contents but 54 follow"),
    "trailing byte": (BASE + b"\x00", "but 56 follow"),
    "checksum": (BASE[:4] + b"\x00\x00\x00\x00" + BASE[8:], "checksum mismatch"),
    "flipped body bit": (_flip(BASE, 40), "checksum mismatch"),
    "document chunk": (MAGIC + bytes(4) + b"\x00\x00", "got a document chunk"),
    "unknown type": (MAGIC + bytes(4) + b"\x07\x00", "unknown chunk type 7"),
    "length overflow": (MAGIC + bytes(4) + b"\x01" + b"\xff" * 11, "exceeds 64 bits"),
    "overlong length": (BASE[:9] + b"\xb7\x00" + BASE[11:], "overlong"),
    "absurd length": (MAGIC + bytes(4) + b"\x01" + encode_uleb128(2**63), "declares"),
    "deps past the end": (chunk(contents(deps=b"\x05" + bytes(64))), "5 dependencies"),
    "deps count absurd": (chunk(contents(deps=encode_uleb128(2**60))), "dependencies do not"),
    "deps count overflow": (chunk(contents(deps=b"\x80" * 10 + b"\x01")), "dependency count"),
    "empty actor": (chunk(contents(actor=b"\x00")), "actor id of 0 bytes"),
    "long actor": (chunk(contents(actor=b"\x41" + bytes(65))), "actor id of 65 bytes"),
    "actor past the end": (chunk(b"\x00\x10" + ACTOR[:3]), "overruns"),
    "seq 0": (chunk(contents(seq=b"\x00")), "seq must be at least 1"),
    "start op 0": (chunk(contents(start_op=b"\x00")), "start op 0 is outside"),
    "start op > 32 bits": (chunk(contents(start_op=encode_uleb128(2**32))), "start op"),
    "time overflow": (chunk(contents(time=b"\xff" * 9 + b"\x01")), "bad time"),
    "message not UTF-8": (chunk(contents(message=b"\x02\xc3\x28")), "not valid UTF-8"),
    "message surrogate": (chunk(contents(message=b"\x03\xed\xa0\x80")), "not valid UTF-8"),
    "message too long": (chunk(contents(message=b"\x7f abc")), "message of 127 bytes"),
    "other actors absurd": (chunk(contents(other_actors=b"\xff\x7f")), "16383 other actors"),
    "empty other actor": (chunk(contents(other_actors=b"\x01\x00")), "other actor id of 0"),
    "no column table": (chunk(contents(ops=b"")), "bad op columns: truncated"),
    "columns past the end": (chunk(contents(ops=b"\x05\x01\x02")), "5 op columns"),
    "column table cut": (chunk(contents(ops=b"\x02\x01\x81\x01\x02")), "table is truncated"),
    "column data too long": (chunk(contents(ops=b"\x01\x01\x05ab")), "declare 5 bytes"),
    "deflated column": (chunk(contents(ops=b"\x01\x19\x00")), "column 1 is deflated"),
    "unsorted columns": (chunk(contents(ops=b"\x02\x15\x00\x01\x00")), "not sorted"),
    "column spec > 32 bits": (
        chunk(contents(ops=b"\x01" + encode_uleb128(2**32) + b"\x00")),
        "exceeds 32 bits",
    ),
    "bad deflate": (deflated(contents(), stream=b"\xff\xff\xff"), "not valid deflate"),
    "cut deflate": (deflated(contents(), stream=raw_deflate(contents())[:-3]), "truncated"),
    "data after deflate": (
        deflated(contents(), stream=raw_deflate(contents()) + b"junk"),
        "4 bytes follow the deflate stream",
    ),
    "deflated, wrong checksum": (
        MAGIC + bytes(4) + deflated(contents())[8:],
        "checksum mismatch",
    ),
}


@pytest.mark.parametrize(("data", "reason"), REJECTED.values(), ids=REJECTED.keys())
def test_malformed_chunk_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ChangeFormatError, match=reason):
        parse_change(data)


def test_a_few_bytes_can_declare_many_ops_and_the_count_says_so() -> None:
    # 200,000 nulls inserted into a list: the columns are runs, the change about 100 bytes.
    doc = Document()
    with doc.transaction() as tx:
        items = tx.put_object(ROOT, "tasks", ObjType.List)
        for index in range(200_000):
            tx.insert(items, index, ScalarType.Null, None)
    change = doc.get_last_local_change()
    assert change is not None
    assert len(change.bytes) < 200
    assert parse_change(change.bytes).op_count == 200_001 == change.max_op - change.start_op + 1


def test_extra_bytes_after_the_columns_are_allowed() -> None:
    # The spec reserves them for future fields, and the library keeps them.
    data = chunk(contents() + b"future")
    assert parse_change(data).hash == hashlib.sha256(data[8:]).digest()
    [loaded] = Document.load(data).get_changes([])
    assert loaded.extra_bytes == b"future"


def test_every_bit_flip_of_a_plain_change_is_refused() -> None:
    for data in CORPUS_PLAIN:
        _, body_start = decode_uleb128(data, 9)
        for index in range(len(data)):
            for bit in range(8):
                mutated = bytearray(data)
                mutated[index] ^= 1 << bit
                with pytest.raises(ChangeFormatError) as refused:
                    parse_change(bytes(mutated))
                if index >= body_start or 4 <= index < 8:
                    assert "checksum mismatch" in str(refused.value)


def test_a_bit_flip_in_a_deflated_change_never_changes_its_hash() -> None:
    # Flips in the unused padding bits of the deflate stream's last byte inflate to the same
    # contents: different bytes, same change, same hash. Everything else is refused.
    for data in CORPUS_DEFLATED:
        expected = parse_change(data).hash
        for index in range(len(data)):
            for bit in range(8):
                mutated = bytearray(data)
                mutated[index] ^= 1 << bit
                try:
                    header = parse_change(bytes(mutated))
                except ChangeFormatError:
                    continue
                assert index == len(data) - 1
                assert header.hash == expected


def parse_or_reason(data: bytes) -> ChangeHeader | str:
    try:
        return parse_change(data)
    except ChangeFormatError as refused:
        return str(refused)


def check_refused_or_consistent(data: bytes) -> None:
    """parse_change either refuses `data`, saying why, or its hash is that of the plain chunk."""
    result = parse_or_reason(data)
    if isinstance(result, str):
        assert result, "a refusal must say why"
        return
    assert result.hash == hashlib.sha256(uncompressed(data)[8:]).digest()
    assert result.data is data


def mutate(data: bytes, kind: str, index: int, payload: bytes) -> bytes:
    if not data:
        return payload
    i = index % len(data)
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ 1 << index % 8]) + data[i + 1 :]
    if kind == "truncate":
        return data[:i]
    if kind == "insert":
        return data[:i] + payload + data[i:]
    return data[:i] + payload + data[i + len(payload) :]  # overwrite


MUTATIONS = st.tuples(
    st.sampled_from(["flip", "truncate", "insert", "overwrite"]),
    st.integers(0),
    st.binary(min_size=1, max_size=40),
)


@settings(max_examples=500)
@given(data=st.sampled_from(CORPUS), mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_mutated_changes_are_refused_or_consistent(
    data: bytes, mutations: list[tuple[str, int, bytes]]
) -> None:
    for kind, index, payload in mutations:
        data = mutate(data, kind, index, payload)
    check_refused_or_consistent(data)


@settings(max_examples=500)
@given(data=st.binary(max_size=300))
def test_random_bytes_are_refused_or_consistent(data: bytes) -> None:
    check_refused_or_consistent(data)
    check_refused_or_consistent(MAGIC + data)


@settings(max_examples=1000)
@given(body=st.binary(max_size=200), compress=st.booleans())
def test_random_contents_with_a_valid_checksum_are_refused_or_consistent(
    body: bytes, compress: bool
) -> None:
    # A valid checksum gets past the framing, so this fuzzes the header fields themselves.
    check_refused_or_consistent(deflated(body) if compress else chunk(body))
    check_refused_or_consistent(chunk(contents(ops=body)))


# --- size bounds ---------------------------------------------------------------------------


def test_the_bound_applies_to_the_inflated_size() -> None:
    plain = contents()
    for data in (chunk(plain), deflated(plain)):
        assert parse_change(data, max_inflated_bytes=len(plain)).hash == parse_change(BASE).hash
        with pytest.raises(ChangeFormatError, match=f"limit of {len(plain) - 1}"):
            parse_change(data, max_inflated_bytes=len(plain) - 1)


def test_zip_bomb_is_refused_without_inflating_it() -> None:
    deflater = zlib.compressobj(9, wbits=-15)
    block = bytes(1 << 20)
    stream = b"".join(deflater.compress(block) for _ in range(64)) + deflater.flush()
    bomb = deflated(b"", stream=stream)  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < MAX_CHANGE_BYTES // 2
    tracemalloc.start()
    try:
        with pytest.raises(ChangeFormatError, match=f"beyond the limit of {MAX_CHANGE_BYTES}"):
            parse_change(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_CHANGE_BYTES


# --- LEB128, exactly as strict as the library --------------------------------------------


@given(st.integers(0, 2**64 - 1))
def test_uleb128_round_trips(value: int) -> None:
    encoded = encode_uleb128(value)
    assert decode_uleb128(b"\xaa" + encoded + b"\xbb", 1) == (value, len(encoded) + 1)


@given(st.integers(-(2**63), 2**63 - 1))
def test_sleb128_round_trips(value: int) -> None:
    encoded = sleb(value)
    assert decode_sleb128(encoded + b"\x80", 0) == (value, len(encoded))


@pytest.mark.parametrize("value", [-1, 2**64])
def test_uleb128_encoder_refuses_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        encode_uleb128(value)


@pytest.mark.parametrize(
    ("decode", "data", "reason"),
    [
        (decode_uleb128, b"", "truncated"),
        (decode_uleb128, b"\xff", "truncated"),
        (decode_uleb128, b"\x81\x00", "overlong"),
        (decode_uleb128, b"\x81" * 12, "exceeds 64 bits"),
        (decode_uleb128, b"\x81" * 9 + b"\x02", "exceeds 64 bits"),
        (decode_sleb128, b"\x90", "truncated"),
        (decode_sleb128, b"\xbf\x00", "overlong"),
        (decode_sleb128, b"\x81\xff\x7f", "overlong"),
        (decode_sleb128, b"\xff" * 9 + b"\x01", "exceeds 64 bits"),
        (decode_sleb128, b"\x80" * 9 + b"\x7e", "exceeds 64 bits"),
        (decode_sleb128, b"\x81" * 12, "exceeds 64 bits"),
    ],
)
def test_leb128_decoders_refuse_what_the_library_refuses(
    decode: Callable[[bytes, int], tuple[int, int]], data: bytes, reason: str
) -> None:
    with pytest.raises(LEB128Error, match=reason):
        decode(data, 0)


def test_leb128_extremes() -> None:
    assert decode_uleb128(b"\xff" * 9 + b"\x01", 0) == (2**64 - 1, 10)
    assert decode_sleb128(b"\xff" * 9 + b"\x00", 0) == (2**63 - 1, 10)
    assert decode_sleb128(b"\x80" * 9 + b"\x7f", 0) == (-(2**63), 10)
    assert decode_sleb128(b"\x40", 0) == (-64, 1)
    assert decode_sleb128(b"\x80\x40", 0) == (-8192, 2)
