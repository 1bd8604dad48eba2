"""Reading the body of ``GET /projects/{id}/snapshot`` as it arrives (sans I/O).

The body (see docs/protocol.md, "HTTP snapshot endpoint") is, optionally gzipped, a
sequence of msgpack maps: ``snapshot_begin``, one map per entity, the project's conflict
records as ``conflicts`` protocol messages, ``snapshot_end``. Feed it bytes with
:meth:`SnapshotStream.feed`, which returns the records complete so far as ``sync.messages``
records (``SnapshotBegin``, ``SnapshotEntity``, ``Conflicts``, ``SnapshotEnd``).

The body comes from the network, so it gets the same bounds as a WebSocket frame. Where a
record ends is found from the msgpack headers alone (``sync.scan``: no value is built, a
declared length is never trusted, nesting is bounded), and a record longer than any
document can be is refused before it is complete. Each complete record is then decoded by
the protocol's own codec (``sync.codec.decode_snapshot_record``), which refuses what does
not fit before it allocates. Memory stays bounded by the largest single document, whatever
the size of the project or the sizes a hostile body declares; gzip is inflated a step at a
time, so a small compressed body cannot expand into more than that either.
"""

from __future__ import annotations

import zlib
from typing import Final

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.model.schema import is_valid_entity_id
from fieldsync.sync import scan
from fieldsync.sync.codec import ProtocolViolation, SnapshotRecord, decode_snapshot_record
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import Conflicts, SnapshotBegin, SnapshotEnd, SnapshotEntity

__all__ = ["SnapshotFormatError", "SnapshotRecord", "SnapshotStream"]

_INFLATE_STEP: Final = 1024 * 1024  # inflate at most this much per step: no gzip bombs
_FRAME_STEP: Final = 64 * 1024  # bytes handed to the record framer at a time
_RECORD_OVERHEAD: Final = 4096  # an entity record's keys, type and id around its document


class SnapshotFormatError(Exception):
    """The body is not a well-formed snapshot."""


class SnapshotStream:
    """Turns body bytes into snapshot records, checking their order and shape."""

    def __init__(self, project_id: str, *, gzipped: bool, limits: Limits = DEFAULT_LIMITS):
        self.project_id = project_id
        self.limits = limits
        self._inflater = zlib.decompressobj(31) if gzipped else None
        self._max_record = limits.max_document_bytes + _RECORD_OVERHEAD
        self._pending = bytearray()  # the body from the start of the current record
        self._framed = 0  # body offset of _pending[0]
        self._record_end = scan.ValueEnd()  # where the current record ends, once it is here
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
            # Never more than the current record (bounded below) and one piece.
            self._pending += data[start : start + _FRAME_STEP]
            used = 0
            while (end := self._next_end()) is not None:
                records.append(self._record(bytes(self._pending[used:end])))
                used = end
                self._record_end = scan.ValueEnd(end)
            del self._pending[:used]
            self._record_end.shift(used)
            self._framed += used
            if len(self._pending) > self._max_record:
                raise SnapshotFormatError(
                    f"a record is longer than {self._max_record} bytes, more than any "
                    "document can be"
                )

    def _next_end(self) -> int | None:
        """The offset in ``_pending`` just past the current record, or None until it is all
        here."""
        try:
            return self._record_end.find(self._pending)
        except scan.Unreadable as exc:
            raise SnapshotFormatError(
                f"the body is not valid msgpack: {exc.message} (in the record at body byte "
                f"{self._framed})"
            ) from None

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
        """One record, read by the protocol's codec: an entity map (the one without ``"t"``)
        or one of the three messages the body may hold, of this project."""
        try:
            item = decode_snapshot_record(record, self.limits)
        except ProtocolViolation as exc:
            if exc.code is ErrorCode.UNKNOWN_MESSAGE_TYPE:
                raise SnapshotFormatError(f"unexpected record: {exc.message}") from None
            raise SnapshotFormatError(f"bad record: {exc.message}") from None
        if not isinstance(item, SnapshotEntity) and item.project_id != self.project_id:
            raise SnapshotFormatError(f"a {item.TYPE} record of another project")
        return item
