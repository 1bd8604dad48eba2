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
"""

import hashlib
import zlib
from dataclasses import dataclass

from model.leb128 import LEB128Error, decode_sleb128, decode_uleb128, encode_uleb128

__all__ = ["MAX_CHANGE_BYTES", "ChangeFormatError", "ChangeHeader", "parse_change"]

MAX_CHANGE_BYTES: int = 256 * 1024
"""Default bound on the size of a change's uncompressed contents."""

_MAGIC = b"\x85\x6f\x4a\x83"
_HEADER_MIN = 10  # magic, checksum, type byte, one-byte length
_HASH_LEN = 32
_MAX_ACTOR_LEN = 64
_MAX_OP_COUNTER = 0xFFFF_FFFF  # the library refuses op counters wider than 32 bits
_DEFLATE_COLUMN = 0x08
_ACTION_COLUMN = 66  # column 4 (action), an unsigned run-length encoded integer column
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
        op_count = _check_columns(body, pos)
    except LEB128Error as e:
        raise ChangeFormatError(f"bad {field}: {e}") from None
    except UnicodeDecodeError as e:
        raise ChangeFormatError(f"message is not valid UTF-8: {e.reason}") from None
    return ChangeHeader(digest, deps, actor, seq, start_op, time_ms, message, data, op_count)


def _actor(body: bytes, pos: int, what: str) -> tuple[bytes, int]:
    size, pos = decode_uleb128(body, pos)
    if not 0 < size <= _MAX_ACTOR_LEN:
        raise ChangeFormatError(f"{what} id of {size} bytes is outside 1..{_MAX_ACTOR_LEN}")
    if size > len(body) - pos:
        raise ChangeFormatError(f"{what} id of {size} bytes overruns the change")
    return body[pos : pos + size], pos + size


def _check_columns(body: bytes, pos: int) -> int:
    """The column table must be sorted, uncompressed, and its data must fit; extra may follow.
    Returns the number of ops, counted from the action column's runs.

    One-byte LEB128s are read inline: this loop is most of the parsing time otherwise.
    """
    end = len(body)
    count, pos = decode_uleb128(body, pos)
    if count * 2 > end - pos:
        raise ChangeFormatError(f"{count} op columns do not fit in the change")
    total = 0
    previous = -1
    action_at = action_size = -1
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
            if spec == _ACTION_COLUMN:
                action_at, action_size = total, size
            previous = spec
            total += size
    except IndexError:
        raise ChangeFormatError("op column table is truncated") from None
    if total > end - pos:
        raise ChangeFormatError(f"op columns declare {total} bytes but only {end - pos} remain")
    if action_at < 0:
        return 0
    return _run_length_count(body, pos + action_at, pos + action_at + action_size)


def _run_length_count(body: bytes, pos: int, end: int) -> int:
    """How many values a run-length encoded column of ULEB128s holds, without expanding it:
    each run is a count, then one value (count > 0), -count literals (count < 0), or a
    count of nulls (count == 0). A few bytes can declare millions of ops, which is exactly
    what the count is for."""
    values = 0
    while pos < end:
        run, pos = decode_sleb128(body, pos)
        if run > 0:
            _, pos = decode_uleb128(body, pos)
            values += run
        elif run < 0:
            for _ in range(-run):
                _, pos = decode_uleb128(body, pos)
            values -= run
        else:
            nulls, pos = decode_uleb128(body, pos)
            values += nulls
        if pos > end:
            raise ChangeFormatError("the action column overruns itself")
    return values


def _column_problem(spec: int) -> str:
    if spec > _MAX_COLUMN_SPEC:
        return f"op column spec {spec} exceeds 32 bits"
    if spec & _DEFLATE_COLUMN:
        return f"op column {spec >> 4} is deflated, which a change forbids"
    return "op columns are not sorted by column spec"
