"""Why a frame is refused, in the protocol's words: what was found where, and for which push.

msgspec refuses a frame with its own message, in its own terms (``Expected `int` >= 0 -
at `$.versions[0]```). ``explain`` turns that into the protocol's ``ProtocolViolation``:
the error code the peer is told and a message naming the field's path from the message
type and what was found there (``hello.versions[0]: must be >= 0, got -1``), read from the
frame's headers by ``sync.scan``. Of several faults, the first in byte order is named, as
a reader going through the frame would meet them: msgspec's, or a key repeated in a map or
an extension value in free-form details, which msgspec lets through (``check_repeated_keys``
finds a repeated key in a frame msgspec accepted). A broken push still names its push id
when it can be read, so the client knows which push gets no result.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

import msgspec
from msgspec import UnsetType

from fieldsync.sync import scan
from fieldsync.sync.errors import ErrorCode, ProtocolViolation
from fieldsync.sync.messages import MAX_MESSAGE_KEYS, Push, UInt

__all__ = [
    "EXTENSIONS",
    "ExtensionValue",
    "Schema",
    "check_repeated_keys",
    "explain",
    "malformed",
    "oversized_push_id",
    "readable_push_id",
    "refuse_extension",
    "render",
]


class ExtensionValue(Exception):  # noqa: N818
    """msgspec met an extension value where any value may stand (free-form details)."""


def refuse_extension(code: int, data: memoryview) -> object:
    """The decoders' ``ext_hook``: no extension value is part of this protocol."""
    raise ExtensionValue


@dataclass(frozen=True, slots=True)
class Schema:
    """What one decoder reads: the record each message type names (whose fields an error
    path follows), how the list of known types is introduced ("a client sends"), and for a
    record without ``"t"`` the name its paths start from."""

    types: Mapping[str, type[msgspec.Struct]]
    known: str
    root: str | None = None


def check_repeated_keys(data: bytes, schema: Schema, root: str) -> None:
    """Refuse a key repeated in any map of a decoded frame."""
    record = schema.types[root]
    found = _repeated_key(data, dict[str, object], {"t": None} | _field_types(record), ())
    if found is not None:
        path, key = found
        raise _repeated(schema, root, path, key)


class _Key:
    """A map key equal to no other, so that decoding keeps every pair, repeats included."""

    __slots__ = ("name",)

    def __init__(self, name: object) -> None:
        self.name = name


def _as_key(kind: type, value: object) -> object:
    return _Key(value)


_PAIRS: Final = msgspec.msgpack.Decoder(dict[_Key, msgspec.Raw], dec_hook=_as_key)
_ITEMS: Final = msgspec.msgpack.Decoder(list[msgspec.Raw])
_Path = tuple[str | int, ...]


@functools.cache
def _field_types(record: type[msgspec.Struct]) -> dict[str, Any]:
    """A record's fields by their name on the wire, with their types."""
    return {f.encode_name: f.type for f in msgspec.structs.fields(record)}


def _repeated_key(
    value: bytes | msgspec.Raw, hint: Any, fields: Mapping[str, Any] | None, path: _Path
) -> tuple[_Path, str] | None:
    """The first key repeated in a map of ``value``, a valid value of type ``hint`` (with
    ``fields`` the types of a record's fields): its map's path and the key. msgspec steps
    over every value that holds no map; Python sees only map keys."""
    hint = _unwrap(hint)
    if fields is None and isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        fields = _field_types(hint)
    kind = scan.head(memoryview(value), 0)[0] if hint is object else None
    if fields is not None or get_origin(hint) is dict or kind == scan.MAP:
        seen: set[object] = set()
        for key, item in _PAIRS.decode(value).items():
            name = key.name
            if name in seen and isinstance(name, str):
                return path, name
            if isinstance(name, str | int):
                seen.add(name)
                item_type = _item_type(hint) if fields is None else fields.get(str(name))
                if found := _repeated_key(item, item_type, None, (*path, name)):
                    return found
        return None
    if get_origin(hint) is tuple or kind == scan.ARRAY:
        item_type = _item_type(hint)
        if not _may_hold_maps(item_type):
            return None
        for index, item in enumerate(_ITEMS.decode(value)):
            if found := _repeated_key(item, item_type, None, (*path, index)):
                return found
    return None


def _item_type(hint: Any) -> Any:
    """The type of a dict's values or a tuple's items (``object`` for free-form values)."""
    args = get_args(hint)
    return args[-1] if get_origin(hint) is dict else args[0] if args else object


def _may_hold_maps(hint: Any) -> bool:
    hint = _unwrap(hint)
    return (
        hint is object
        or get_origin(hint) is dict
        or (isinstance(hint, type) and issubclass(hint, msgspec.Struct))
    )


def _repeated(schema: Schema, root: str, path: _Path, key: str) -> ProtocolViolation:
    """A key repeated in the map at ``path``: a record's "field", or a free-form "key"."""
    if path:
        record = _type_at(schema, root, path)
        is_record = isinstance(record, type) and issubclass(record, msgspec.Struct)
    else:
        is_record = key != "t"
    what = "field" if is_record else "key"
    return ProtocolViolation(
        ErrorCode.INVALID_MESSAGE, f"{root}{render(path)}: {what} {key!r} appears twice"
    )


def _structural(found: scan.Finding, schema: Schema, root: str) -> ProtocolViolation:
    """What ``scan.first_finding`` found in a refused frame, as the violation to report."""
    if found.key is None:
        return malformed(f"byte {found.at}: {EXTENSIONS}")
    return _repeated(schema, root, found.path, found.key)


EXTENSIONS: Final = "msgpack extension types are not used by this protocol"
_WHERE: Final = re.compile(r"(`key` in )?`(\$[^`]*)`")
_STEP: Final = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+)\]|\[(\.\.\.)\]")
_KINDS: Final[Mapping[str, str]] = {"None": "nil", "null": "nil", "object": "map"}


def malformed(message: str) -> ProtocolViolation:
    return ProtocolViolation(ErrorCode.MALFORMED_FRAME, message)


def render(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def explain(data: bytes, schema: Schema, exc: Exception) -> ProtocolViolation:
    """What is wrong with a frame msgspec refused: the first fault in byte order, whether
    msgspec found it or it is a repeated key or an extension value msgspec did not look
    for (with the message type unknown, only what msgspec says about ``"t"``)."""
    root = schema.root or _type_name(data, schema)
    violation, at = _translate(data, schema, root, exc)
    if root is None:  # msgspec looked for "t" over keys it did not read as str
        violation = _bad_key(data, at) or violation
    else:
        found = scan.first_finding(data)
        if found is not None and found.at < at:
            violation = _structural(found, schema, root)
    if root == Push.TYPE and violation.push_id is None:
        violation.push_id = readable_push_id(data)
    return violation


def _translate(
    data: bytes, schema: Schema, root: str | None, exc: Exception
) -> tuple[ProtocolViolation, int]:
    """msgspec's refusal in this protocol's words, and the byte where msgspec found it (the
    frame's length where it does not say)."""
    end = len(data)
    if isinstance(exc, RecursionError):
        return malformed("values are nested too deeply"), end
    if isinstance(exc, ExtensionValue):
        return malformed(EXTENSIONS), end  # scan found none: it could not read that far
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        return _validation(data, schema, root, text)
    byte = re.search(r"\(byte (\d+)\)", text)
    at = int(byte[1]) if byte else end
    if text.startswith("Input data was truncated"):
        return malformed("the frame ends inside a value"), end
    if "trailing characters" in text:
        return malformed(f"{end - at} bytes follow the message"), at
    if "invalid opcode" in text:
        return malformed(f"byte {at}: 0xc1 is not msgpack"), at
    if "UTF-8" in text:
        return malformed("a string is not valid UTF-8"), at
    if "hashable" in text:
        return malformed("map keys must be strings"), at
    return malformed(f"not valid msgpack: {text}"), at


def _validation(
    data: bytes, schema: Schema, root: str | None, text: str
) -> tuple[ProtocolViolation, int]:
    """msgspec's ``ValidationError`` in this protocol's words, with the value found, and
    where: the value's first byte, or the key's for a key, the map's end for a missing
    field."""
    what, _, where = text.rpartition(" - at ")
    at = _WHERE.fullmatch(where)
    path: tuple[str | int, ...] = ()
    if at is None:  # at the top level msgspec names no place
        what = text
    else:
        path = _resolve(data, schema, root, _steps(at[2]))
        if at[1]:
            kind = re.search(r"got `([^`]*)`", what)
            key_at = _key_at(data, path, None)
            if kind and kind[1] == "ext":
                return malformed(f"byte {key_at}: {EXTENSIONS}"), key_at
            message = f"map keys must be strings, got {_kind(kind[1] if kind else '?')}"
            return malformed(message), key_at
    if root is None and (path == ("t",) or (not path and what.endswith("field `t`"))):
        return _type_refusal(data, schema, what, path), len(data)  # no type: nothing else
    root = root or "message"
    place = f"{root}{render(path)}"
    span = _refused_value(data, schema, root, path)
    first = span[0] if span else len(data)
    found = _found(data, span)
    invalid = ErrorCode.INVALID_MESSAGE
    if match := re.fullmatch(r"Object missing required field `(.*)`", what, re.S):
        message = f"{place}: missing field {match[1]!r}"
        return ProtocolViolation(invalid, message), span[1] if span else len(data)
    if match := re.fullmatch(r"Object contains unknown field `(.*)`", what, re.S):
        record = _type_at(schema, root, path)
        names = ", ".join(_field_types(record)) if record is not None else ""
        message = f"{place}: unexpected field {match[1][:64]!r} (fields: {names})"
        return ProtocolViolation(invalid, message), _key_at(data, path, match[1])
    if match := re.fullmatch(r"Expected `([^`]*)`, got `([^`]*)`", what):
        if match[2] == "ext":
            return malformed(f"byte {span[0]}: {EXTENSIONS}" if span else EXTENSIONS), first
        message = f"{place}: expected {_kind(match[1])}, got {_kind(match[2])}"
        return ProtocolViolation(invalid, message), first
    if match := re.fullmatch(r"Expected `int` >= (\d+)", what):
        return ProtocolViolation(invalid, f"{place}: must be >= {match[1]}{found}"), first
    if re.fullmatch(r"Expected `int` <= \d+", what):
        message = f"{place}: must fit in a signed 64-bit integer{found}"
        return ProtocolViolation(invalid, message), first
    if match := re.fullmatch(r"Expected `(str|array|object)` of length <= (\d+)", what):
        if match[1] == "str":
            message = f"{place}: at most {match[2]} characters{found}"
            return ProtocolViolation(invalid, message), first
        if root == Push.TYPE and path == ("entities",):
            message = f"{place}: at most {match[2]} entities per push{found}"
            return ProtocolViolation(ErrorCode.TOO_MANY_ENTITIES, message), first
        return ProtocolViolation(invalid, f"{place}: at most {match[2]} items{found}"), first
    return ProtocolViolation(invalid, f"{place}: {what}"), first


def _bad_key(data: bytes, before: int) -> ProtocolViolation | None:
    """A top-level key before byte ``before`` that is not a valid str, said as such."""
    try:
        for key, key_start, _, _ in scan.map_items(data, 0, MAX_MESSAGE_KEYS):
            if key_start >= before:
                return None
            if key is None:
                kind = scan.kind(data[key_start])
                if kind == scan.STR:
                    return malformed("a string is not valid UTF-8")
                if kind == scan.EXT:
                    return malformed(f"byte {key_start}: {EXTENSIONS}")
                return malformed(f"map keys must be strings, got {scan.KIND_NAMES[kind]}")
    except (scan.Incomplete, scan.Unreadable):
        pass
    return None


def _refused_value(
    data: bytes, schema: Schema, root: str, path: tuple[str | int, ...]
) -> tuple[int, int] | None:
    """Where the value msgspec refused at ``path`` starts and ends. msgspec reads every
    value of a repeated key and reports the first fault, so along the path a repeated
    key leads to its first value that the field's type refuses."""
    start: int | None = 0
    try:
        for depth, step in enumerate(path):
            assert start is not None
            if isinstance(step, int):
                start = scan.item_start(data, start, step)
            else:
                found = _values_of(data, start, step)
                start = found[0] if found else None
                if len(found) > 1:
                    start = _first_refused(data, schema, root, path[: depth + 1], found)
            if start is None:
                return None
        assert start is not None
        return start, scan.value_end(data, start)
    except (scan.Incomplete, scan.Unreadable):
        return None


def _values_of(data: bytes, start: int, key: str) -> list[int]:
    """Where each value of ``key`` starts in the map at ``start``, as far as it can be read."""
    found = []
    try:
        for name, value in scan.keys(data, start):
            if name == key:
                found.append(value)
    except (scan.Incomplete, scan.Unreadable):
        pass
    return found


def _first_refused(
    data: bytes, schema: Schema, root: str, path: tuple[str | int, ...], starts: list[int]
) -> int:
    """Of the values a repeated key at ``path`` has, the first its type refuses."""
    hint = Literal[root] if path == ("t",) else _type_at(schema, root, path, unwrap=False)
    if hint is None:
        return starts[0]
    for start in starts:
        try:
            msgspec.msgpack.decode(data[start : scan.value_end(data, start)], type=hint)
        except (msgspec.DecodeError, scan.Incomplete, scan.Unreadable, RecursionError):
            return start
    return starts[0]


def _key_at(data: bytes, path: tuple[str | int, ...], key: str | None) -> int:
    """Where ``key`` is in the map at ``path``; for None, the first key that is not a
    str (which may be where the bytes stop being readable)."""
    start = scan.start_of(data, path)
    if start is None:
        return len(data)
    following = len(data)
    try:
        following = scan.head(data, start)[2]
        for name, key_start, _, end in scan.map_items(data, start):
            if name == key:
                return key_start
            following = end
    except (scan.Incomplete, scan.Unreadable):
        if key is None:
            return following
    return len(data)


def _found(data: bytes, span: tuple[int, int] | None) -> str:
    """``, got ...``: the value at ``span``, an int, a str's length or a container's count."""
    if span is None:
        return ""
    kind, count, _ = scan.head(data, span[0])
    if kind in (scan.ARRAY, scan.MAP):
        return f", got {count}"
    value = _decoded(data, span)
    return f", got {len(value)}" if isinstance(value, str) else f", got {value}"


def _type_refusal(
    data: bytes, schema: Schema, what: str, path: tuple[str | int, ...]
) -> ProtocolViolation:
    """msgspec could not learn the message type from ``"t"``."""
    invalid = ErrorCode.INVALID_MESSAGE
    if what == "Object missing required field `t`":
        return ProtocolViolation(invalid, "the map has no 't' key naming its type")
    if found := re.fullmatch(r"Expected `str`, got `([^`]*)`", what):
        if found[1] == "ext":
            span = scan.locate(data, path)
            return malformed(f"byte {span[0]}: {EXTENSIONS}" if span else EXTENSIONS)
        return ProtocolViolation(
            invalid, f"'t' must be a string naming the type, got {_kind(found[1])}"
        )
    name = _decoded(data, scan.locate(data, ("t",)))
    return ProtocolViolation(
        ErrorCode.UNKNOWN_MESSAGE_TYPE,
        f"unknown message type {str(name)[:64]!r}; {schema.known} " + ", ".join(schema.types),
    )


def _kind(name: str) -> str:
    first = name.split(" | ")[0]
    return _KINDS.get(first, first)


def _steps(path: str) -> tuple[str | int, ...]:
    """``$.entities[0].changes[...]`` as ``("entities", 0, "changes", "...")``."""
    steps: list[str | int] = []
    for name, index, any_key in _STEP.findall(path[1:]):
        steps.append(name or any_key or int(index))
    return tuple(steps)


def _resolve(
    data: bytes, schema: Schema, root: str | None, path: tuple[str | int, ...]
) -> tuple[str | int, ...]:
    """The path with each ``...`` (msgspec's word for "a value of this dict") replaced by the
    key of the first value there that the dict's value type refuses."""
    resolved: list[str | int] = []
    for step in path:
        if step == "..." and root is not None:
            span = scan.locate(data, tuple(resolved))
            value_type = get_args(_unwrap(_type_at(schema, root, tuple(resolved))))[-1:]
            if span is not None and value_type:
                try:
                    for key, _, start, end in scan.map_items(data, span[0]):
                        try:
                            msgspec.msgpack.decode(data[start:end], type=value_type[0])
                        except msgspec.DecodeError:
                            step = key if key is not None else step
                            break
                except (scan.Incomplete, scan.Unreadable):
                    pass
        resolved.append(step)
    return tuple(resolved)


def _unwrap(hint: Any) -> Any:
    """The type under ``Annotated`` and under ``| None`` or ``| UnsetType``."""
    while True:
        origin = get_origin(hint)
        if origin is Annotated:
            hint = get_args(hint)[0]
        elif origin is Union or isinstance(hint, types.UnionType):
            options = [a for a in get_args(hint) if a not in (type(None), UnsetType)]
            hint = options[0]
        else:
            return hint


def _type_at(schema: Schema, root: str, path: tuple[str | int, ...], *, unwrap: bool = True) -> Any:
    """The type of the value at ``path`` in a message of type ``root``, for naming the
    fields of a record or finding a dict's value type; None if the path leads nowhere."""
    hint: Any = schema.types.get(root)
    for step in path:
        hint = _unwrap(hint)
        if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            fields = _field_types(hint)
            if step not in fields:
                return None
            hint = fields[step]
        elif get_origin(hint) in (tuple, dict):
            hint = get_args(hint)[-1] if get_origin(hint) is dict else get_args(hint)[0]
        else:
            return None
    return _unwrap(hint) if hint is not None and unwrap else hint


def _decoded(data: bytes, span: tuple[int, int] | None) -> object:
    """The scalar at ``span``, decoded without a schema ("?" for an array or a map, which
    are never built here)."""
    if span is None or scan.head(data, span[0])[0] in (scan.ARRAY, scan.MAP):
        return "?"
    try:
        return msgspec.msgpack.decode(data[span[0] : span[1]])
    except msgspec.DecodeError:
        return "?"


def _type_name(data: bytes, schema: Schema) -> str | None:
    """The message type the first ``"t"`` names, if this schema knows it."""
    name = _decoded(data, scan.locate(data, ("t",)))
    return name if isinstance(name, str) and name in schema.types else None


def _uint(value: bytes) -> int | None:
    try:
        number: int = msgspec.msgpack.decode(value, type=UInt)
    except msgspec.DecodeError:
        return None
    return number


def oversized_push_id(data: bytes) -> int | None:
    """The push id of a frame too large to decode, if it is a push whose id can be read:
    its first keys are read, their values stepped over unread, so the client learns which
    push will get no result."""
    kind = push_id = None
    try:
        for key, _, start, end in scan.map_items(data, 0, MAX_MESSAGE_KEYS):
            if key == "t" and kind is None:
                kind = _decoded(data, (start, end))
            elif key == "push_id" and push_id is None:
                push_id = _uint(data[start:end])
    except (scan.Incomplete, scan.Unreadable):
        pass
    return push_id if kind == Push.TYPE else None


def readable_push_id(data: bytes) -> int | None:
    """The push id of a push that is broken elsewhere, if the pairs up to it can be read."""
    try:
        for key, _, start, end in scan.map_items(data, 0):
            if key == "push_id":
                return _uint(data[start:end])
    except (scan.Incomplete, scan.Unreadable):
        pass
    return None
