"""The structure of msgpack bytes, read without building their values.

``sync.codec`` decodes with msgspec, which checks types and bounds in C but says little
about a value it refuses. What it does not tell is found here, from headers: where a
value ends (so the HTTP snapshot body can be cut into records as it arrives), where a
field of a broken frame starts (so an error can say what was found there, or which push
it belongs to), and a key repeated in a map or an extension value met before the point
where a broken frame fails.

Nothing here builds a container or trusts a declared length. In a whole frame, values are
stepped over by msgspec itself (``value_end``: in C, over a view of the bytes, nesting
bounded by the recursion limit); only map keys, array indexes and headers are read in
Python, and each walk in Python stops after ``MAX_STEPS`` values, so a hostile frame of
millions of tiny values costs milliseconds here. A body that arrives in pieces is cut into
records header by header (``ValueEnd``), once over each byte, nesting at most
``MAX_DEPTH`` deep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import msgspec

__all__ = [
    "MAX_DEPTH",
    "MAX_STEPS",
    "Finding",
    "Incomplete",
    "Unreadable",
    "ValueEnd",
    "first_finding",
    "head",
    "item_start",
    "keys",
    "kind",
    "locate",
    "map_items",
    "start_of",
    "value_end",
]

MAX_DEPTH: Final = 64  # open arrays and maps at once, where values are read one by one
MAX_STEPS: Final = 100_000  # values read one by one in Python by one call here

NIL, BOOL, INT, FLOAT, STR, BYTES, ARRAY, MAP, EXT, INVALID = range(10)
KIND_NAMES: Final = ("nil", "bool", "int", "float", "str", "bytes", "array", "map", "ext")


class Incomplete(Exception):  # noqa: N818 (not a failure when more bytes may come)
    """The bytes end inside a value."""


class Unreadable(Exception):  # noqa: N818
    """The bytes are not msgpack (``0xc1``), or nest deeper than can be read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _table() -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Per first byte: the kind, the width of the length field that follows it (0: none),
    and a fixed size: the payload bytes of a fixed-size value, the count or length held in
    the first byte itself, or the type byte an extension adds to its length."""
    kind, width, fixed = [INVALID] * 256, [0] * 256, [0] * 256
    for b in (*range(0x80), *range(0xE0, 0x100)):
        kind[b] = INT
    for low, what in ((0x80, MAP), (0x90, ARRAY)):
        for b in range(low, low + 16):
            kind[b], fixed[b] = what, b & 0x0F
    for b in range(0xA0, 0xC0):
        kind[b], fixed[b] = STR, b & 0x1F
    for b, what, size in (
        (0xC0, NIL, 0), (0xC2, BOOL, 0), (0xC3, BOOL, 0), (0xCA, FLOAT, 4), (0xCB, FLOAT, 8),
        (0xCC, INT, 1), (0xCD, INT, 2), (0xCE, INT, 4), (0xCF, INT, 8),
        (0xD0, INT, 1), (0xD1, INT, 2), (0xD2, INT, 4), (0xD3, INT, 8),
        (0xD4, EXT, 2), (0xD5, EXT, 3), (0xD6, EXT, 5), (0xD7, EXT, 9), (0xD8, EXT, 17),
    ):  # fmt: skip
        kind[b], fixed[b] = what, size
    for b, what, size, extra in (
        (0xC4, BYTES, 1, 0), (0xC5, BYTES, 2, 0), (0xC6, BYTES, 4, 0),
        (0xC7, EXT, 1, 1), (0xC8, EXT, 2, 1), (0xC9, EXT, 4, 1),
        (0xD9, STR, 1, 0), (0xDA, STR, 2, 0), (0xDB, STR, 4, 0),
        (0xDC, ARRAY, 2, 0), (0xDD, ARRAY, 4, 0), (0xDE, MAP, 2, 0), (0xDF, MAP, 4, 0),
    ):  # fmt: skip
        kind[b], width[b], fixed[b] = what, size, extra
    return tuple(kind), tuple(width), tuple(fixed)


_KIND, _WIDTH, _FIXED = _table()


def kind(first: int) -> int:
    """The kind of value a first byte starts (``INVALID`` for ``0xc1``)."""
    return _KIND[first]


def head(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int]:
    """The value at ``pos``: its kind, its size and where its contents start.

    The size is the item count of an array or map (its items follow from the start), and
    for anything else the bytes after the header (for a str, bin or ext, its length as
    declared: the bytes may not all be there). Raises ``Incomplete`` when the header
    itself is cut, ``Unreadable`` for ``0xc1``.
    """
    if pos >= len(buf):
        raise Incomplete
    first = buf[pos]
    width = _WIDTH[first]
    if not width:
        if _KIND[first] == INVALID:
            raise Unreadable(f"byte {pos}: 0xc1 is not msgpack")
        return _KIND[first], _FIXED[first], pos + 1
    start = pos + 1 + width
    if start > len(buf):
        raise Incomplete
    return _KIND[first], int.from_bytes(buf[pos + 1 : start], "big") + _FIXED[first], start


_RAW: Final = msgspec.msgpack.Decoder(msgspec.Raw)
_TRAILING: Final = re.compile(r"trailing characters \(byte (\d+)\)")


def value_end(buf: bytes | bytearray, pos: int) -> int:
    """The offset just past the value at ``pos``, stepped over by msgspec in C.

    msgspec reads one value and reports where the bytes after it begin; that is the one
    thing taken from its message. ``Incomplete`` if the bytes end first, ``Unreadable``
    if they are not msgpack or nest deeper than the recursion limit lets msgspec go.
    """
    try:
        _RAW.decode(memoryview(buf)[pos:])
    except msgspec.DecodeError as exc:
        text = str(exc)
        if after := _TRAILING.search(text):
            return pos + int(after[1])
        if "truncated" in text:
            raise Incomplete from None
        raise Unreadable(text) from None
    except RecursionError:
        raise Unreadable("values are nested too deeply") from None
    return len(buf)


class ValueEnd:
    """Finds where the value starting at ``buf[start]`` ends, over bytes that may still grow.

    For a body read as it arrives, which msgspec cannot do: it reads only whole values.
    ``find`` returns None while the value is incomplete and picks up where it stopped
    when called again with more bytes, so a value arriving in many pieces is read once,
    header by header. If bytes are dropped from the front of the buffer, ``shift`` moves
    the reading place with them.
    """

    __slots__ = ("_open", "_pos")

    def __init__(self, start: int = 0) -> None:
        self._pos = start
        self._open = [1]  # items still to read in each open container, outermost first

    def shift(self, dropped: int) -> None:
        self._pos -= dropped

    def find(self, buf: bytes | bytearray) -> int | None:
        """The offset just past the value, or None until it is all in ``buf``."""
        pos, opened, size = self._pos, self._open, len(buf)
        kinds, widths, fixed = _KIND, _WIDTH, _FIXED  # head(), inlined: this runs per value
        try:
            while opened:
                if not opened[-1]:
                    opened.pop()
                    continue
                if pos >= size:
                    return None
                first = buf[pos]
                width = widths[first]
                if width:
                    start = pos + 1 + width
                    if start > size:
                        return None
                    length = int.from_bytes(buf[pos + 1 : start], "big") + fixed[first]
                else:
                    start, length = pos + 1, fixed[first]
                kind = kinds[first]
                if kind in (ARRAY, MAP):
                    if len(opened) > MAX_DEPTH:
                        raise Unreadable("values are nested too deeply")
                    opened[-1] -= 1
                    opened.append(length if kind == ARRAY else 2 * length)
                    pos = start
                elif kind == INVALID:
                    raise Unreadable(f"byte {pos}: 0xc1 is not msgpack")
                else:
                    if start + length > size:
                        return None
                    opened[-1] -= 1
                    pos = start + length
            return pos
        finally:
            self._pos = pos


def map_items(
    buf: bytes, pos: int, most: int = MAX_STEPS
) -> Iterator[tuple[str | None, int, int, int]]:
    """The first ``most`` pairs of the map at ``pos``, in order and repeats included: each key
    (None when it is not a valid str), where the key starts, and where its value starts and
    ends. Stops early with ``Incomplete`` or ``Unreadable`` where the bytes do; the pairs
    before that are yielded. A value that is not a map yields nothing.
    """
    kind, count, at = head(buf, pos)
    if kind != MAP:
        return
    for _ in range(min(count, most)):
        key, value_start = _key(buf, at)
        end = value_end(buf, value_start)
        yield key, at, value_start, end
        at = end


def _key(buf: bytes, pos: int) -> tuple[str | None, int]:
    """The map key at ``pos`` (None if it is not a valid str), and where its value starts."""
    kind, length, start = head(buf, pos)
    end = value_end(buf, pos)
    if kind != STR:
        return None, end
    try:
        return buf[start : start + length].decode(), end
    except UnicodeDecodeError:
        return None, end


def start_of(buf: bytes, path: tuple[str | int, ...]) -> int | None:
    """Where the value at ``path`` (map keys and array indexes from the top-level value)
    starts; for a repeated key, its first value. None if it cannot be found within
    ``MAX_STEPS`` values stepped over."""
    start: int | None = 0
    try:
        for part in path:
            assert start is not None
            if isinstance(part, int):
                start = item_start(buf, start, part)
            else:
                start = next((v for k, v in keys(buf, start) if k == part), None)
            if start is None:
                return None
    except (Incomplete, Unreadable):
        return None
    return start


def item_start(buf: bytes, pos: int, index: int) -> int | None:
    """Where item ``index`` of the array at ``pos`` starts (None: no such item, or it is
    past ``MAX_STEPS``)."""
    kind, count, at = head(buf, pos)
    if kind != ARRAY or index >= count or index > MAX_STEPS:
        return None
    for _ in range(index):
        at = value_end(buf, at)
    return at


def keys(buf: bytes, pos: int) -> Iterator[tuple[str | None, int]]:
    """The keys of the map at ``pos`` and where each one's value starts, stepping over the
    values in between but never computing the end of the last one asked for."""
    kind, count, at = head(buf, pos)
    if kind != MAP:
        return
    for _ in range(min(count, MAX_STEPS)):
        key, value_start = _key(buf, at)
        yield key, value_start
        at = value_end(buf, value_start)


def locate(buf: bytes, path: tuple[str | int, ...]) -> tuple[int, int] | None:
    """Where the value at ``path`` starts and ends (see ``start_of``), if it is all there."""
    start = start_of(buf, path)
    if start is None:
        return None
    try:
        return start, value_end(buf, start)
    except (Incomplete, Unreadable):
        return None


@dataclass(frozen=True, slots=True)
class Finding:
    """A key repeated in its map, or an extension value; ``path`` leads to the map holding
    the key (``key`` set), or to the extension value (``key`` None) at byte ``at``."""

    path: tuple[str | int, ...]
    at: int
    key: str | None = None


class _Open:
    __slots__ = ("is_map", "keys", "left", "step")

    def __init__(self, is_map: bool, left: int) -> None:
        self.is_map = is_map
        self.left = left  # items (keys and values) still to read
        self.step: str | int = -1  # the current key, or the index of the current item
        self.keys: set[bytes] = set()


def first_finding(buf: bytes) -> Finding | None:
    """The first repeated map key or extension value in ``buf``, in byte order.

    Reads value by value up to the first such finding, the first byte it cannot read, a
    nesting deeper than ``MAX_DEPTH`` or ``MAX_STEPS`` values, whichever comes first: past
    that it has nothing to say (the decoder reports what is wrong there).
    """
    opened: list[_Open] = []
    pos = 0
    try:
        for _ in range(MAX_STEPS):
            if opened and not opened[-1].left:
                opened.pop()
                if not opened:
                    return None
                continue
            parent = opened[-1] if opened else None
            kind, length, start = head(buf, pos)
            if parent is not None:
                parent.left -= 1
                if not parent.is_map:
                    parent.step = int(parent.step) + 1
                elif parent.left % 2:  # a key: its value follows
                    parent.step = "?"
                    if kind == STR:
                        if start + length > len(buf):
                            return None
                        key = buf[start : start + length]
                        if key in parent.keys:
                            path = tuple(o.step for o in opened[:-1])
                            return Finding(path, pos, key.decode(errors="replace"))
                        parent.keys.add(key)
                        parent.step = key.decode(errors="replace")
            if kind == EXT:
                return Finding(tuple(o.step for o in opened), pos)
            if kind in (ARRAY, MAP):
                if len(opened) >= MAX_DEPTH:
                    return None
                opened.append(_Open(kind == MAP, length * (2 if kind == MAP else 1)))
                pos = start
            else:
                pos = start + length
                if pos > len(buf) or not opened:
                    return None
    except (Incomplete, Unreadable):
        pass
    return None
