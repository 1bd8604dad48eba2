"""Reading the body of ``GET /projects/{id}/snapshot`` as it arrives (sans I/O).

The body (see docs/protocol.md, "HTTP snapshot endpoint") is, optionally gzipped, a
sequence of msgpack maps: ``snapshot_begin``, one map per entity, the project's conflict
records as ``conflicts`` protocol messages, ``snapshot_end``. Feed it bytes with
:meth:`SnapshotStream.feed`, which returns the records complete so far as ``sync.messages``
records (``SnapshotBegin``, ``SnapshotEntity``, ``Conflicts``, ``SnapshotEnd``).

The body comes from the network, so it gets the same bounds as a WebSocket frame. msgpack
never builds a value here: it only *skips* over each record to find where the record ends
(skipping reads container headers without allocating their slots, so 3 KB of nested array
headers cost nothing), and a record longer than any document can be is refused before it is
complete. Each complete record is then decoded by the protocol's own bounded decoder
(``sync.codec.decode_server``), which refuses what does not fit before it allocates. Memory
stays bounded by the largest single document, whatever the size of the project or of the
sizes a hostile body declares; gzip is inflated a step at a time, so a small compressed body
cannot expand into more than that either.
"""

from __future__ import annotations

import zlib
from typing import Final

import msgpack

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.model.schema import is_valid_entity_id
from fieldsync.sync.codec import ProtocolViolation, decode_server
from fieldsync.sync.messages import (
    Conflicts,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotEntity,
)

__all__ = ["SnapshotFormatError", "SnapshotRecord", "SnapshotStream"]

SnapshotRecord = SnapshotBegin | SnapshotEntity | Conflicts | SnapshotEnd

_INFLATE_STEP: Final = 1024 * 1024  # inflate at most this much per step: no gzip bombs
_FRAME_STEP: Final = 64 * 1024  # bytes handed to the record framer at a time
_RECORD_OVERHEAD: Final = 4096  # an entity record's keys, type and id around its document
_HEAD_BYTES: Final = 80  # enough to read a record's first key and a type name after it
_MESSAGES: Final = frozenset({SnapshotBegin.TYPE, Conflicts.TYPE, SnapshotEnd.TYPE})
_ENTITY_PATH: Final = f"{SnapshotChunk.TYPE}.entities[0]"  # where the codec reports errors


class SnapshotFormatError(Exception):
    """The body is not a well-formed snapshot."""


def _named_type(record: bytes) -> str | None:
    """The type a record names when its first key is ``"t"`` (the server writes it first),
    else None. Reads only the record's first bytes and builds no container."""
    head = msgpack.Unpacker(
        raw=False,
        max_buffer_size=_HEAD_BYTES,
        max_str_len=_HEAD_BYTES,
        max_bin_len=0,
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
    )
    head.feed(record[:_HEAD_BYTES])
    try:
        head.read_map_header()
        if head.unpack() != "t":
            return None
        name = head.unpack()
    except (ValueError, msgpack.UnpackException, msgpack.OutOfData):
        return None
    return name if isinstance(name, str) else None


class SnapshotStream:
    """Turns body bytes into snapshot records, checking their order and shape."""

    def __init__(self, project_id: str, *, gzipped: bool, limits: Limits = DEFAULT_LIMITS):
        self.project_id = project_id
        self.limits = limits
        self._inflater = zlib.decompressobj(31) if gzipped else None
        self._max_record = limits.max_document_bytes + _RECORD_OVERHEAD
        # Only ever asked to skip(): it finds where each record ends without building it.
        self._framer = msgpack.Unpacker(max_buffer_size=self._max_record + _FRAME_STEP)
        self._pending = bytearray()  # the body from the start of the current record
        self._framed = 0  # body offset of _pending[0]
        # An entity record is exactly an item of a snapshot_chunk's "entities": it is read
        # as the one entity of such a chunk, by the same decoder.
        self._chunk_head = b"".join(
            [
                b"\x83",
                msgpack.packb("t"),
                msgpack.packb(SnapshotChunk.TYPE),
                msgpack.packb("project_id"),
                msgpack.packb(project_id),
                msgpack.packb("entities"),
                b"\x91",
            ]
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
        if self._pending:
            raise SnapshotFormatError(
                f"the body ends inside a record ({len(self._pending)} bytes of it arrived)"
            )
        if self.end is None:
            raise SnapshotFormatError("the body ended before snapshot_end")
        return self.end

    def _take(self, data: bytes, records: list[SnapshotRecord]) -> None:
        for start in range(0, len(data), _FRAME_STEP):
            piece = data[start : start + _FRAME_STEP]
            # Never full: it holds at most the current record (bounded below) and one piece.
            self._framer.feed(piece)
            self._pending += piece
            used = 0
            while (end := self._record_end()) is not None:
                size = end - self._framed
                record = bytes(self._pending[used : used + size])
                used += size
                self._framed = end
                records.append(self._record(record))
            del self._pending[:used]
            if len(self._pending) > self._max_record:
                raise SnapshotFormatError(
                    f"a record is longer than {self._max_record} bytes, more than any "
                    "document can be"
                )

    def _record_end(self) -> int | None:
        """The body offset just past the next complete record, or None until it is all here."""
        try:
            self._framer.skip()
        except msgpack.OutOfData:
            return None
        except msgpack.StackError:
            raise SnapshotFormatError("the body's values are nested too deeply") from None
        except (ValueError, msgpack.UnpackException) as exc:
            raise SnapshotFormatError(f"the body is not valid msgpack: {exc}") from None
        end: int = self._framer.tell()
        return end

    def _record(self, record: bytes) -> SnapshotRecord:
        if self.end is not None:
            raise SnapshotFormatError("data follows snapshot_end")
        item = self._decode(record)
        if self.begin is None:
            if not isinstance(item, SnapshotBegin):
                raise SnapshotFormatError("the body does not start with snapshot_begin")
            self.begin = item
            return item
        if isinstance(item, SnapshotEntity):
            if not is_valid_entity_id(item.entity_id):
                raise SnapshotFormatError(f"invalid entity id {item.entity_id!r:.80}")
            self.entities += 1
            return item
        if isinstance(item, SnapshotEnd):
            if item.cursor != self.begin.cursor:
                raise SnapshotFormatError(
                    f"snapshot_end says cursor {item.cursor}, snapshot_begin said "
                    f"{self.begin.cursor}"
                )
            if self.entities != self.begin.entity_count:
                raise SnapshotFormatError(
                    f"{self.entities} entities arrived, snapshot_begin announced "
                    f"{self.begin.entity_count}"
                )
            self.end = item
            return item
        if isinstance(item, Conflicts):
            return item
        raise SnapshotFormatError("snapshot_begin appears twice")

    def _decode(self, record: bytes) -> SnapshotRecord:
        """One record, read by the protocol's own bounded decoder: an entity map (the one
        without ``"t"``) or one of the three messages the body may hold, of this project."""
        named = _named_type(record)
        if named is None:
            try:
                return self._entity(record)
            except ProtocolViolation as exc:
                try:  # keys may come in any order: a message whose "t" is not first?
                    message = decode_server(record, self.limits)
                except ProtocolViolation:
                    detail = exc.message.removeprefix(_ENTITY_PATH).lstrip(".: ")
                    raise SnapshotFormatError(f"bad entity record: {detail}") from None
        elif named not in _MESSAGES:
            raise SnapshotFormatError(f"unexpected record {named!r:.40} in the snapshot")
        else:
            try:
                message = decode_server(record, self.limits)
            except ProtocolViolation as exc:
                raise SnapshotFormatError(f"bad {named} record: {exc}") from None
        if not isinstance(message, SnapshotBegin | Conflicts | SnapshotEnd):
            raise SnapshotFormatError(f"unexpected record {message.TYPE!r} in the snapshot")
        if message.project_id != self.project_id:
            raise SnapshotFormatError(f"a {message.TYPE} record of another project")
        return message

    def _entity(self, record: bytes) -> SnapshotEntity:
        chunk = decode_server(self._chunk_head + record, self.limits)
        assert isinstance(chunk, SnapshotChunk)
        [entity] = chunk.entities
        return entity
