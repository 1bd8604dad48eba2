"""Validate one untrusted Automerge change chunk and read its header, without the library.

The library applies changes leniently (a bad change is dropped silently, and takes the
changes after it in the same sync message with it), so every change a client sends is
checked here first. The format is the Automerge binary format spec's change chunk:

    magic (85 6f 4a 83) | checksum (4) | type (1 change, 2 deflated change) | ULEB length
    | deps | actor | seq | start op | time | message | other actors | op columns | extra

The hash is SHA-256 of type byte + length + contents of the *uncompressed* chunk and the
checksum is its first 4 bytes, so a deflated chunk has the same hash as its plain form.
Ops are not decoded, only the column table is checked to fit, so the library may still
refuse a change accepted here: check its hash is reachable from the heads after applying.
Three columns are walked (never expanded): the actions, to count the ops, and the value
metadata and raw values, to find the values the binding panics on reading (counters,
unknown types, timestamps it cannot turn into a datetime), so that such a change is refused
before the binding ever reads it.
"""

import hashlib
import zlib
from dataclasses import dataclass

from fieldsync.model.leb128 import LEB128Error, decode_sleb128, decode_uleb128, encode_uleb128

__all__ = [
    "MAX_CHANGE_BYTES",
    "TIMESTAMP_MAX_MS",
    "TIMESTAMP_MIN_MS",
    "ChangeFormatError",
    "ChangeHeader",
    "parse_change",
]

MAX_CHANGE_BYTES: int = 256 * 1024
"""Default bound on the size of a change's uncompressed contents."""

_MAGIC = b"\x85\x6f\x4a\x83"
_HEADER_MIN = 10  # magic, checksum, type byte, one-byte length
_HASH_LEN = 32
_MAX_ACTOR_LEN = 64
_MAX_OP_COUNTER = 0xFFFF_FFFF  # the library refuses op counters wider than 32 bits
_DEFLATE_COLUMN = 0x08
# Column specs (column id << 4 | type) read here: action (an unsigned run-length encoded
# integer column), value metadata (run-length encoded length << 4 | type) and raw values.
_ACTION_COLUMN = 66
_VALUE_META_COLUMN = 86
_VALUE_RAW_COLUMN = 87
_ACTION_INCREMENT = 5
_VALUE_COUNTER = 8
_VALUE_TIMESTAMP = 9
_VALUE_FIRST_UNKNOWN = 10  # type codes 10-15 are unknown to this Automerge version
_MAX_UNREADABLE = 10  # unreadable values kept per change: the first one is what is reported
_INCREMENT = "counter increment"
_RANGE = "0001-01-03..9999-12-29"

TIMESTAMP_MIN_MS = -62_135_424_000_000
"""0001-01-03T00:00:00.000Z: the earliest timestamp accepted (see ``TIMESTAMP_MAX_MS``)."""
TIMESTAMP_MAX_MS = 253_402_127_999_999
"""9999-12-29T23:59:59.999Z: the latest timestamp accepted. The binding reads a timestamp
as a *local* Python datetime, which exists only within years 1-9999 of the reader's own
time zone (and CPython's local conversion looks a day further): two days are kept clear at
each end so that every server and SDK reads every stored timestamp, whatever its zone."""
_MAX_COLUMN_SPEC = 0xFFFF_FFFF
_CHUNK_NAMES = {0: "a document chunk", 3: "a bundle chunk", 4: "a bundle chunk"}


class ChangeFormatError(ValueError):
    """The bytes are not a well-formed Automerge change chunk; str() says precisely why."""


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """What the server needs to know about a change before storing or applying it."""

    hash: bytes  # SHA-256 of the uncompressed chunk: the change's identity
    deps: tuple[bytes, ...]  # hashes of the changes it builds on, in wire order
    actor: bytes
    seq: int  # 1 for an actor's first change
    start_op: int  # counter of its first op
    time_ms: int  # as the client claims; 0 from the core API
    message: str | None
    data: bytes  # the chunk exactly as received (possibly compressed)
    op_count: int = 0  # how many ops the change holds (its cost once applied)
    # Values the binding panics on reading, as (op index, what): the first few, if any.
    unreadable: tuple[tuple[int, str], ...] = ()


def parse_change(data: bytes, *, max_inflated_bytes: int = MAX_CHANGE_BYTES) -> ChangeHeader:
    """Check `data` is exactly one change chunk with a valid checksum; return its header.

    Raises ChangeFormatError and nothing else, whatever the bytes. A deflated chunk is never
    inflated beyond `max_inflated_bytes`, which also bounds uncompressed chunks.
    """
    if len(data) < _HEADER_MIN:
        raise ChangeFormatError(f"{len(data)} bytes is too short for a change chunk")
    if data[:4] != _MAGIC:
        raise ChangeFormatError("not an Automerge chunk: wrong magic bytes")
    chunk_type = data[8]
    if chunk_type != 1 and chunk_type != 2:
        what = _CHUNK_NAMES.get(chunk_type, f"unknown chunk type {chunk_type}")
        raise ChangeFormatError(f"expected a change chunk, got {what}")
    try:
        length, start = decode_uleb128(data, 9)
    except LEB128Error as e:
        raise ChangeFormatError(f"bad chunk length: {e}") from None
    if start + length != len(data):
        raise ChangeFormatError(
            f"chunk declares {length} bytes of contents but {len(data) - start} follow"
        )
    if chunk_type == 1:
        if length > max_inflated_bytes:
            raise ChangeFormatError(
                f"change of {length} bytes exceeds the limit of {max_inflated_bytes}"
            )
        body = data
        digest = hashlib.sha256(data[8:]).digest()
    else:
        body = _inflate(memoryview(data)[start:], max_inflated_bytes)
        start = 0
        hasher = hashlib.sha256(b"\x01" + encode_uleb128(len(body)))
        hasher.update(body)
        digest = hasher.digest()
    if digest[:4] != data[4:8]:
        raise ChangeFormatError(
            f"checksum mismatch: chunk says {data[4:8].hex()}, contents hash to {digest[:4].hex()}"
        )
    return _parse_contents(body, start, digest, data)


def _inflate(compressed: memoryview, limit: int) -> bytes:
    """Raw DEFLATE, refusing to produce more than `limit` bytes (a zip bomb stays small)."""
    inflater = zlib.decompressobj(wbits=-15)
    try:
        # max_length 0 would mean "unbounded", hence the floor of 1.
        out = inflater.decompress(compressed, max(limit, 0) + 1)
    except zlib.error as e:
        raise ChangeFormatError(f"compressed change is not valid deflate data: {e}") from None
    if len(out) > limit:
        raise ChangeFormatError(f"compressed change inflates beyond the limit of {limit} bytes")
    if not inflater.eof:
        raise ChangeFormatError("compressed change is truncated: deflate stream does not end")
    if inflater.unused_data:
        stray = len(inflater.unused_data)
        raise ChangeFormatError(f"{stray} bytes follow the deflate stream of a compressed change")
    return out


def _parse_contents(body: bytes, pos: int, digest: bytes, data: bytes) -> ChangeHeader:
    """Read the header fields of the (uncompressed) contents body[pos:]."""
    end = len(body)
    field = "dependency count"
    try:
        count, pos = decode_uleb128(body, pos)
        if count * _HASH_LEN > end - pos:
            raise ChangeFormatError(f"{count} dependencies do not fit in the change")
        deps_end = pos + count * _HASH_LEN
        deps = tuple(body[p : p + _HASH_LEN] for p in range(pos, deps_end, _HASH_LEN))
        pos = deps_end
        field = "actor"
        actor, pos = _actor(body, pos, field)
        field = "seq"
        seq, pos = decode_uleb128(body, pos)
        if seq == 0:
            raise ChangeFormatError("seq must be at least 1")
        field = "start op"
        start_op, pos = decode_uleb128(body, pos)
        if not 0 < start_op <= _MAX_OP_COUNTER:
            raise ChangeFormatError(f"start op {start_op} is outside 1..{_MAX_OP_COUNTER}")
        field = "time"
        time_ms, pos = decode_sleb128(body, pos)
        field = "message length"
        size, pos = decode_uleb128(body, pos)
        if size > end - pos:
            raise ChangeFormatError(f"message of {size} bytes overruns the change")
        message = body[pos : pos + size].decode() if size else None
        pos += size
        field = "other actor count"
        count, pos = decode_uleb128(body, pos)
        if count * 2 > end - pos:
            raise ChangeFormatError(f"{count} other actors do not fit in the change")
        field = "other actor"
        for _ in range(count):
            _, pos = _actor(body, pos, field)
        field = "op columns"
        op_count, unreadable = _check_columns(body, pos)
    except LEB128Error as e:
        raise ChangeFormatError(f"bad {field}: {e}") from None
    except UnicodeDecodeError as e:
        raise ChangeFormatError(f"message is not valid UTF-8: {e.reason}") from None
    return ChangeHeader(
        digest, deps, actor, seq, start_op, time_ms, message, data, op_count, unreadable
    )


def _actor(body: bytes, pos: int, what: str) -> tuple[bytes, int]:
    size, pos = decode_uleb128(body, pos)
    if not 0 < size <= _MAX_ACTOR_LEN:
        raise ChangeFormatError(f"{what} id of {size} bytes is outside 1..{_MAX_ACTOR_LEN}")
    if size > len(body) - pos:
        raise ChangeFormatError(f"{what} id of {size} bytes overruns the change")
    return body[pos : pos + size], pos + size


def _check_columns(body: bytes, pos: int) -> tuple[int, tuple[tuple[int, str], ...]]:
    """The column table must be sorted, uncompressed, and its data must fit; extra may follow.
    Returns the number of ops, counted from the action column's runs, and the values the
    binding cannot read (``_scan_actions``, ``_scan_values``).

    One-byte LEB128s are read inline: this loop is most of the parsing time otherwise.
    """
    end = len(body)
    count, pos = decode_uleb128(body, pos)
    if count * 2 > end - pos:
        raise ChangeFormatError(f"{count} op columns do not fit in the change")
    total = 0
    previous = -1
    spans: dict[int, tuple[int, int]] = {}  # spec -> (offset in the column data, size)
    try:
        for _ in range(count):
            spec = body[pos]
            if spec < 0x80:
                pos += 1
            else:
                spec, pos = decode_uleb128(body, pos)
            size = body[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = decode_uleb128(body, pos)
            if spec & _DEFLATE_COLUMN or spec < previous or spec > _MAX_COLUMN_SPEC:
                raise ChangeFormatError(_column_problem(spec))
            if spec in (_ACTION_COLUMN, _VALUE_META_COLUMN, _VALUE_RAW_COLUMN):
                spans[spec] = (total, size)
            previous = spec
            total += size
    except IndexError:
        raise ChangeFormatError("op column table is truncated") from None
    if total > end - pos:
        raise ChangeFormatError(f"op columns declare {total} bytes but only {end - pos} remain")

    def column(spec: int) -> tuple[int, int]:
        offset, size = spans.get(spec, (0, 0))
        return pos + offset, pos + offset + size

    op_count, found = _scan_actions(body, *column(_ACTION_COLUMN))
    found += _scan_values(body, column(_VALUE_META_COLUMN), column(_VALUE_RAW_COLUMN))
    return op_count, tuple(sorted(found)[:_MAX_UNREADABLE])


def _scan_actions(body: bytes, pos: int, end: int) -> tuple[int, list[tuple[int, str]]]:
    """How many ops the run-length encoded action column holds, without expanding it (a few
    bytes can declare millions of ops, which is what the count is for), and the first
    counter increments (op index, "counter increment")."""
    ops = 0
    found: list[tuple[int, str]] = []
    while pos < end:
        run, pos = _sleb(body, pos)
        if run > 0:
            action, pos = _uleb(body, pos)
            if action == _ACTION_INCREMENT:
                found.extend((i, _INCREMENT) for i in range(ops, ops + min(run, _MAX_UNREADABLE)))
            ops += run
        elif run < 0:
            for _ in range(-run):
                action, pos = _uleb(body, pos)
                if action == _ACTION_INCREMENT:
                    found.append((ops, _INCREMENT))
                ops += 1
        else:
            nulls, pos = _uleb(body, pos)
            ops += nulls
        if pos > end:
            raise ChangeFormatError("the action column overruns itself")
    return ops, found


def _scan_values(
    body: bytes, meta: tuple[int, int], raw: tuple[int, int]
) -> list[tuple[int, str]]:
    """The values the binding cannot read, as (op index, what): counters, values of an
    unknown type, timestamps outside ``TIMESTAMP_MIN_MS..TIMESTAMP_MAX_MS``.

    The metadata column is run-length encoded ``length << 4 | type``; the raw column holds
    the values' bytes one after another. Runs are walked, never expanded: only timestamps
    are read one by one, and their bytes bound how many there can be.
    """
    pos, end = meta
    at, raw_end = raw
    op = 0
    found: list[tuple[int, str]] = []
    while pos < end:
        run, pos = _sleb(body, pos)
        if run == 0:
            nulls, pos = _uleb(body, pos)
            op += nulls
            continue
        if run > 0:
            value, pos = _uleb(body, pos)
            values: tuple[tuple[int, int], ...] | list[tuple[int, int]] = ((value, run),)
        else:
            values = []
            for _ in range(-run):
                value, pos = _uleb(body, pos)
                values.append((value, 1))
        for value, count in values:
            length, code = value >> 4, value & 0x0F
            if at + length * count > raw_end:
                raise ChangeFormatError("a value overruns the raw value column")
            if code == _VALUE_TIMESTAMP:
                for _ in range(count):
                    millis, stop = decode_sleb128(body, at)
                    if stop != at + length:
                        raise ChangeFormatError("a timestamp value does not fill its length")
                    if not TIMESTAMP_MIN_MS <= millis <= TIMESTAMP_MAX_MS:
                        found.append((op, f"timestamp {millis} ms outside {_RANGE}"))
                    at, op = stop, op + 1
                continue
            if code == _VALUE_COUNTER or code >= _VALUE_FIRST_UNKNOWN:
                what = "counter" if code == _VALUE_COUNTER else f"value of unknown type {code}"
                found.extend((i, what) for i in range(op, op + min(count, _MAX_UNREADABLE)))
            at += length * count
            op += count
        if pos > end:
            raise ChangeFormatError("the value metadata column overruns itself")
    return found


def _uleb(body: bytes, pos: int) -> tuple[int, int]:
    """``decode_uleb128`` with the one- and two-byte cases inline: most values in a column
    are small (a string's metadata is two bytes from 8 bytes of length on)."""
    if pos + 1 < len(body):
        first = body[pos]
        if first < 0x80:
            return first, pos + 1
        second = body[pos + 1]
        if 0 < second < 0x80:  # a zero high byte would be an overlong encoding
            return (first & 0x7F) | second << 7, pos + 2
    return decode_uleb128(body, pos)


def _sleb(body: bytes, pos: int) -> tuple[int, int]:
    """``decode_sleb128`` with the one-byte case inline (run counts of -64..63)."""
    first = body[pos] if pos < len(body) else 0x80
    if first < 0x40:
        return first, pos + 1
    if first < 0x80:
        return first - 0x80, pos + 1
    return decode_sleb128(body, pos)


def _column_problem(spec: int) -> str:
    if spec > _MAX_COLUMN_SPEC:
        return f"op column spec {spec} exceeds 32 bits"
    if spec & _DEFLATE_COLUMN:
        return f"op column {spec >> 4} is deflated, which a change forbids"
    return "op columns are not sorted by column spec"
