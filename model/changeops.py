"""The operations of one change, read from its bytes: root-map ops and unreadable values.

The binding can say which value wins at a key but not which values a change overwrote.
Every Automerge operation lists its *predecessors* (the ops it replaces), and that list is
exactly "the values this client saw at the key when it wrote": two or more predecessors
mean the client resolved a conflict. The change chunk format is the public Automerge binary
format: after the header come op columns, each one encoded with run-length, delta or
boolean encoding. Only the columns needed here are decoded (object, key, action, pred).

Values are read through the binding, except for the ones it panics on (a Rust panic,
printed raw to stderr): ``model.changes`` finds them while it parses a change, and
``unsupported_values`` here says which object and key each one is written to.

Column specs (column id << 4 | type) of a change chunk, as written by Automerge 2 and 3::

    1 objActor  2 objCtr  17 keyActor  19 keyCtr  21 keyStr  52 insert  66 action
    86 valMeta  87 valRaw  112 predGroup  113 predActor  115 predCtr

A column whose values are all null is omitted; unknown columns are skipped.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fieldsync.model.changes import ChangeFormatError, ChangeHeader, parse_change
from fieldsync.model.leb128 import LEB128Error, decode_sleb128, decode_uleb128

__all__ = [
    "ACTION_DELETE",
    "ACTION_PUT",
    "ChangeOps",
    "OpId",
    "RootOp",
    "UnsupportedValue",
    "created_objects",
    "decode_change_ops",
    "parse_op_id",
    "unsupported_values",
]

# Op actions of the format.
ACTION_MAKE_MAP = 0
ACTION_PUT = 1
ACTION_MAKE_LIST = 2
ACTION_DELETE = 3
ACTION_MAKE_TEXT = 4
ACTION_INCREMENT = 5
ACTION_MAKE_TABLE = 6
ACTION_MARK = 7

_MAKE_ACTIONS = frozenset({ACTION_MAKE_MAP, ACTION_MAKE_LIST, ACTION_MAKE_TEXT, ACTION_MAKE_TABLE})

_OBJ_ACTOR, _OBJ_CTR, _KEY_STR = 1, 2, 21
_ACTION = 66
_PRED_GROUP, _PRED_ACTOR, _PRED_CTR = 112, 113, 115
_MAX_OPS = 1_000_000  # a change is at most 256 KiB, so far fewer ops than this

T = TypeVar("T")

@dataclass(frozen=True, slots=True, order=True)
class OpId:
    """An operation id. Ordering is Automerge's: the greatest (counter, actor) wins a key."""

    counter: int
    actor: bytes

    def __str__(self) -> str:
        return f"{self.counter}@{self.actor.hex()}"


@dataclass(frozen=True, slots=True)
class RootOp:
    """An op on a key of the root map: a put, a delete or the creation of an object there."""

    key: str
    action: int
    op_id: OpId
    pred: tuple[OpId, ...]

    @property
    def is_delete(self) -> bool:
        return self.action == ACTION_DELETE


@dataclass(frozen=True, slots=True)
class ChangeOps:
    """A change's identity and its root-map ops (other ops are only counted)."""

    hash: bytes
    actor: bytes
    seq: int
    start_op: int
    deps: tuple[bytes, ...]
    op_count: int
    root_ops: tuple[RootOp, ...]

    @property
    def max_op(self) -> int:
        return self.start_op + self.op_count - 1

    def owns(self, op: OpId) -> bool:
        """True if ``op`` is one of this change's own operations."""
        return op.actor == self.actor and self.start_op <= op.counter <= self.max_op

    def keys_written(self) -> frozenset[str]:
        return frozenset(op.key for op in self.root_ops)

    def outside_pred(self, key: str) -> frozenset[OpId]:
        """The ops at ``key`` this change replaced that it did not make itself.

        They are the values the author saw at ``key`` before this change: more than one means
        the author resolved a conflict there.
        """
        return frozenset(
            p for op in self.root_ops if op.key == key for p in op.pred if not self.owns(p)
        )


@dataclass(frozen=True, slots=True)
class UnsupportedValue:
    """A value the binding cannot read, at op ``index`` of a change.

    ``key`` is the map key the op writes (None for a list element), ``obj`` the object it
    writes in (None for the root map), ``what`` a short description for the client.
    """

    index: int
    obj: OpId | None
    key: str | None
    what: str


def parse_op_id(exid: bytes) -> OpId | None:
    """The op id in an object/op id as the binding returns it (None for the root object).

    The binding's bytes are: a tag byte, the actor (ULEB128 length, then bytes), the actor's
    index in that document (ULEB128, meaningless elsewhere) and the counter (ULEB128).
    """
    if len(exid) <= 1:
        return None
    try:
        size, pos = decode_uleb128(exid, 1)
        actor = exid[pos : pos + size]
        _, pos = decode_uleb128(exid, pos + size)
        counter, pos = decode_uleb128(exid, pos)
    except LEB128Error:
        return None
    if len(actor) != size or pos != len(exid):
        return None
    return OpId(counter, bytes(actor))


def decode_change_ops(data: bytes) -> ChangeOps:
    """Decode a change chunk's header and its root-map ops; raises ChangeFormatError."""
    header = parse_change(data)
    body, pos = _contents(data)
    try:
        return _decode(_read_columns(body, pos), header.hash)
    except (LEB128Error, IndexError, UnicodeDecodeError) as exc:
        raise ChangeFormatError(f"undecodable op columns: {exc}") from None


def unsupported_values(header: ChangeHeader) -> list[UnsupportedValue]:
    """The values of a parsed change the binding cannot read (``ChangeHeader.unreadable``,
    found while parsing), each with the object and map key it is written to. The object and
    key columns are decoded only here, for a change that holds such a value."""
    if not header.unreadable:
        return []
    body, pos = _contents(header.data)
    try:
        change = _read_columns(body, pos)
        n = header.op_count
        obj_actor = _padded(_rle(change.columns.get(_OBJ_ACTOR, b""), _uleb), n)
        obj_ctr = _padded(_rle(change.columns.get(_OBJ_CTR, b""), _uleb), n)
        keys = _padded(_rle(change.columns.get(_KEY_STR, b""), _string), n)
        located = []
        for index, what in header.unreadable:
            actor, counter = obj_actor[index], obj_ctr[index]
            obj = None if actor is None or counter is None else OpId(counter, change.actors[actor])
            located.append(UnsupportedValue(index, obj, keys[index], what))
        return located
    except (LEB128Error, IndexError, UnicodeDecodeError) as exc:
        raise ChangeFormatError(f"undecodable op columns: {exc}") from None


def _contents(data: bytes) -> tuple[bytes, int]:
    _, start = decode_uleb128(data, 9)
    if data[8] == 1:
        return data, start
    return zlib.decompress(data[start:], wbits=-15), 0


@dataclass(frozen=True, slots=True)
class _Columns:
    """A change's header fields the decoders need, and its op columns by spec."""

    actor: bytes
    seq: int
    start_op: int
    deps: tuple[bytes, ...]
    actors: list[bytes]  # index 0 is the change's own actor
    columns: dict[int, bytes]


def _read_columns(body: bytes, pos: int) -> _Columns:
    count, pos = decode_uleb128(body, pos)
    deps = tuple(body[pos + i * 32 : pos + (i + 1) * 32] for i in range(count))
    pos += 32 * count
    size, pos = decode_uleb128(body, pos)
    actor = body[pos : pos + size]
    pos += size
    seq, pos = decode_uleb128(body, pos)
    start_op, pos = decode_uleb128(body, pos)
    _, pos = decode_sleb128(body, pos)  # time
    size, pos = decode_uleb128(body, pos)
    pos += size  # message
    count, pos = decode_uleb128(body, pos)
    actors = [actor]
    for _ in range(count):
        size, pos = decode_uleb128(body, pos)
        actors.append(body[pos : pos + size])
        pos += size
    count, pos = decode_uleb128(body, pos)
    specs: list[tuple[int, int]] = []
    for _ in range(count):
        spec, pos = decode_uleb128(body, pos)
        length, pos = decode_uleb128(body, pos)
        specs.append((spec, length))
    columns: dict[int, bytes] = {}
    for spec, length in specs:
        if pos + length > len(body):
            raise ChangeFormatError("op column overruns the change")
        columns[spec] = body[pos : pos + length]
        pos += length
    return _Columns(actor, seq, start_op, deps, actors, columns)


def created_objects(data: bytes) -> dict[OpId, tuple[OpId | None, str | None]]:
    """The objects a change creates: object id -> (the object it was made in, None for the
    root; the map key it was put at, None in a list). Raises ChangeFormatError."""
    body, pos = _contents(data)
    try:
        change = _read_columns(body, pos)
        actions = _rle(change.columns.get(_ACTION, b""), _uleb)
        n = len(actions)
        obj_actor = _padded(_rle(change.columns.get(_OBJ_ACTOR, b""), _uleb), n)
        obj_ctr = _padded(_rle(change.columns.get(_OBJ_CTR, b""), _uleb), n)
        keys = _padded(_rle(change.columns.get(_KEY_STR, b""), _string), n)
    except (LEB128Error, IndexError, UnicodeDecodeError) as exc:
        raise ChangeFormatError(f"undecodable op columns: {exc}") from None
    created: dict[OpId, tuple[OpId | None, str | None]] = {}
    for index, action in enumerate(actions):
        if action not in _MAKE_ACTIONS:
            continue
        actor, counter = obj_actor[index], obj_ctr[index]
        parent = None if actor is None or counter is None else OpId(counter, change.actors[actor])
        created[OpId(change.start_op + index, change.actor)] = (parent, keys[index])
    return created


def _decode(change: _Columns, digest: bytes) -> ChangeOps:
    columns, actors, start_op, actor = change.columns, change.actors, change.start_op, change.actor
    actions = _rle(columns.get(_ACTION, b""), _uleb)
    n = len(actions)
    if n > _MAX_OPS:
        raise ChangeFormatError(f"{n} ops in one change")
    obj_actor = _padded(_rle(columns.get(_OBJ_ACTOR, b""), _uleb), n)
    obj_ctr = _padded(_rle(columns.get(_OBJ_CTR, b""), _uleb), n)
    keys = _padded(_rle(columns.get(_KEY_STR, b""), _string), n)
    groups = _padded(_rle(columns.get(_PRED_GROUP, b""), _uleb), n)
    total = sum(g or 0 for g in groups)
    pred_actor = _padded(_rle(columns.get(_PRED_ACTOR, b""), _uleb), total)
    pred_ctr = _padded(_delta(columns.get(_PRED_CTR, b"")), total)

    root_ops: list[RootOp] = []
    cursor = 0
    for index in range(n):
        group = groups[index] or 0
        preds = tuple(
            OpId(_need(pred_ctr[i]), actors[_need(pred_actor[i])])
            for i in range(cursor, cursor + group)
        )
        cursor += group
        key = keys[index]
        action = actions[index]
        if obj_actor[index] is None and obj_ctr[index] is None and key is not None:
            op_id = OpId(start_op + index, actor)
            root_ops.append(RootOp(key, _need(action), op_id, preds))
    return ChangeOps(digest, actor, change.seq, start_op, change.deps, n, tuple(root_ops))


def _need(value: T | None) -> T:
    if value is None:
        raise ChangeFormatError("null where an op column needs a value")
    return value


def _padded(values: list[T | None], n: int) -> list[T | None]:
    if len(values) > n:
        raise ChangeFormatError("op column longer than the op count")
    return values + [None] * (n - len(values))


def _uleb(buf: bytes, pos: int) -> tuple[int, int]:
    return decode_uleb128(buf, pos)


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    size, pos = decode_uleb128(buf, pos)
    if pos + size > len(buf):
        raise ChangeFormatError("string overruns its op column")
    return buf[pos : pos + size].decode(), pos + size


def _rle(buf: bytes, read: Callable[[bytes, int], tuple[T, int]]) -> list[T | None]:
    """Run-length decoding: a run count, then one value (n > 0), n literals (n < 0), or a
    count of nulls (n == 0)."""
    out: list[T | None] = []
    pos = 0
    while pos < len(buf):
        run, pos = decode_sleb128(buf, pos)
        if run > 0:
            value, pos = read(buf, pos)
            out.extend([value] * run)
        elif run < 0:
            for _ in range(-run):
                value, pos = read(buf, pos)
                out.append(value)
        else:
            nulls, pos = decode_uleb128(buf, pos)
            out.extend([None] * nulls)
        if len(out) > _MAX_OPS:
            raise ChangeFormatError("op column holds too many values")
    return out


def _delta(buf: bytes) -> list[int | None]:
    """Delta decoding: run-length encoded signed differences from the previous value."""
    out: list[int | None] = []
    current = 0
    for step in _rle(buf, decode_sleb128):
        if step is None:
            out.append(None)
        else:
            current += step
            out.append(current)
    return out
