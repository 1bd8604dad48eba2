"""Reading the body of ``GET /projects/{id}/snapshot`` as it arrives (sans I/O).

The body (see docs/protocol.md, "HTTP snapshot endpoint") is, optionally gzipped, a
sequence of msgpack maps: ``snapshot_begin``, one map per entity, the project's conflict
records as ``conflicts`` protocol messages, ``snapshot_end``. Feed it bytes with
:meth:`SnapshotStream.feed`, which returns the records complete so far as ``sync.messages``
records (``SnapshotBegin``, ``SnapshotEntity``, ``Conflicts``, ``SnapshotEnd``). Memory
stays bounded by the largest single document, whatever the size of the project.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import TypeVar

import msgpack

from model.limits import DEFAULT_LIMITS, Limits
from model.schema import is_valid_entity_id
from sync.codec import ProtocolViolation, decode_server
from sync.messages import Conflicts, SnapshotBegin, SnapshotEnd, SnapshotEntity

__all__ = ["SnapshotFormatError", "SnapshotRecord", "SnapshotStream"]

SnapshotRecord = SnapshotBegin | SnapshotEntity | Conflicts | SnapshotEnd

_INFLATE_STEP = 1024 * 1024  # inflate at most this much per step: no gzip bombs
_RECORD_OVERHEAD = 4096


class SnapshotFormatError(Exception):
    """The body is not a well-formed snapshot."""


M = TypeVar("M", SnapshotBegin, SnapshotEnd, Conflicts)


def _text(record: Mapping[str, object], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise SnapshotFormatError(f"{key} must be a string, got {type(value).__name__}")
    return value


class SnapshotStream:
    """Turns body bytes into snapshot records, checking their order and shape."""

    def __init__(self, project_id: str, *, gzipped: bool, limits: Limits = DEFAULT_LIMITS):
        self.project_id = project_id
        self._inflater = zlib.decompressobj(31) if gzipped else None
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=limits.max_document_bytes + _RECORD_OVERHEAD,
        )
        self.begin: SnapshotBegin | None = None
        self.end: SnapshotEnd | None = None
        self.entities = 0

    def feed(self, data: bytes) -> list[SnapshotRecord]:
        records: list[SnapshotRecord] = []
        if self._inflater is None:
            self._take(data, records)
            return records
        pending = data
        while pending:
            try:
                out = self._inflater.decompress(pending, _INFLATE_STEP)
            except zlib.error as exc:
                raise SnapshotFormatError(f"the body is not valid gzip: {exc}") from None
            pending = self._inflater.unconsumed_tail
            self._take(out, records)
            if self._inflater.eof and (pending or self._inflater.unused_data):
                raise SnapshotFormatError("bytes follow the end of the gzip stream")
        return records

    def finish(self) -> SnapshotEnd:
        """The body ended: it must have ended with ``snapshot_end`` and nothing after."""
        if self._inflater is not None:
            tail = self._inflater.flush()
            if tail or not self._inflater.eof:
                raise SnapshotFormatError("the gzip stream is truncated")
        if self.end is None:
            raise SnapshotFormatError("the body ended before snapshot_end")
        return self.end

    def _take(self, data: bytes, records: list[SnapshotRecord]) -> None:
        if not data:
            return
        try:
            self._unpacker.feed(data)
            for item in self._unpacker:
                records.append(self._record(item))
        except msgpack.exceptions.BufferFull:
            raise SnapshotFormatError("a record is larger than any document can be") from None
        except (msgpack.exceptions.ExtraData, ValueError, TypeError) as exc:
            if isinstance(exc, SnapshotFormatError):
                raise
            raise SnapshotFormatError(f"the body is not valid msgpack: {exc}") from None

    def _record(self, item: object) -> SnapshotRecord:
        if not isinstance(item, dict):
            raise SnapshotFormatError(f"expected a map, got {type(item).__name__}")
        if self.end is not None:
            raise SnapshotFormatError("data follows snapshot_end")
        kind = item.get("t")
        if self.begin is None:
            if kind != SnapshotBegin.TYPE:
                raise SnapshotFormatError("the body does not start with snapshot_begin")
            self.begin = self._message(item, SnapshotBegin)
            return self.begin
        if kind == SnapshotEnd.TYPE:
            end = self._message(item, SnapshotEnd)
            if end.cursor != self.begin.cursor:
                raise SnapshotFormatError(
                    f"snapshot_end says cursor {end.cursor}, snapshot_begin said "
                    f"{self.begin.cursor}"
                )
            if self.entities != self.begin.entity_count:
                raise SnapshotFormatError(
                    f"{self.entities} entities arrived, snapshot_begin announced "
                    f"{self.begin.entity_count}"
                )
            self.end = end
            return end
        if kind == Conflicts.TYPE:
            return self._message(item, Conflicts)
        if kind is not None:
            raise SnapshotFormatError(f"unexpected record {kind!r:.40} in the snapshot")
        entity_id = _text(item, "entity_id")
        if not is_valid_entity_id(entity_id):
            raise SnapshotFormatError(f"invalid entity id {entity_id!r:.80}")
        document = item.get("document")
        if not isinstance(document, bytes):
            raise SnapshotFormatError(f"entity {entity_id}: document must be bytes")
        self.entities += 1
        return SnapshotEntity(_text(item, "entity_type"), entity_id, document)

    def _message(self, item: dict[str, object], kind: type[M]) -> M:
        """A protocol message of the body, read by the protocol's own decoder; it must be of
        ``kind`` and of this project."""
        try:
            message = decode_server(msgpack.packb(item, use_bin_type=True))
        except ProtocolViolation as exc:
            raise SnapshotFormatError(f"bad {kind.TYPE} record: {exc}") from None
        if not isinstance(message, kind) or message.project_id != self.project_id:
            raise SnapshotFormatError(f"a {kind.TYPE} record of another project")
        return message
