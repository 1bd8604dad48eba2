"""Codec benchmark: encode and decode throughput of real frames, without I/O.

The frames are made from real Automerge changes and documents (activities created and
edited through ``model.writer``) before anything is timed:

- a ``push`` of 10 entities with 5 changes each, as a tablet sends after a day offline;
- a ``changes`` frame of 500 logged changes, as a client catching up receives;
- a ``snapshot_chunk`` of whole documents, filled to the server's 512 KiB chunk size;
- an HTTP snapshot body (``snapshot_begin``, 2,000 entity records, ``snapshot_end``) read
  through the Python SDK's ``SnapshotStream``, for the bootstrap path over HTTP.

Each figure is the median of several rounds, in microseconds per frame and MB/s of frame
bytes. The script only uses the codec's public API, so it runs unchanged against an older
checkout (put its ``src`` first on PYTHONPATH) for a before/after comparison.

    python bench/codec.py [--rounds N]

The last line is the headline: the decode time of the 500-change frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from automerge.core import Document

from fieldsync.model.writer import create_entity, splice_text, update_entity
from fieldsync.sync.codec import decode_client, decode_server, encode
from fieldsync.sync.messages import (
    ChangeRecord,
    Changes,
    EntityPush,
    Message,
    Push,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotEntity,
)
from fieldsync_client.snapshot_stream import SnapshotStream
from tests.entities import START, activity_values, new_id

CHUNK_BYTES = 512 * 1024  # live.session.SNAPSHOT_CHUNK_BYTES
BODY_ENTITIES = 2_000


def _history(index: int, edits: int) -> tuple[Document, list[bytes]]:
    """An activity's creation and ``edits`` edits: real changes, and the document."""
    doc, first = create_entity("activity", activity_values(new_id(), new_id()))
    changes = [first]
    for n in range(edits):
        if n % 2:
            changes.append(splice_text(doc, "description", 0, 0, f"Note {index}.{n}. "))
        else:
            ends = START + timedelta(hours=8, minutes=n)
            changes.append(update_entity(doc, "activity", {"ends_at": ends}))
    return doc, changes


def frames() -> dict[str, tuple[Message, Callable[[bytes], object]]]:
    histories = [(new_id(), *_history(i, 9)) for i in range(50)]
    push = Push(
        7,
        new_id(),
        tuple(
            EntityPush("activity", entity_id, tuple(changes[:5]))
            for entity_id, _, changes in histories[:10]
        ),
    )
    records = [
        ChangeRecord(seq, "activity", entity_id, change)
        for seq, (entity_id, change) in enumerate(
            ((entity_id, change) for entity_id, _, changes in histories for change in changes),
            start=1,
        )
    ]
    changes = Changes(new_id(), tuple(records[:500]))
    documents: list[SnapshotEntity] = []
    size, index = 0, 0
    while size < CHUNK_BYTES:
        entity_id, doc, _ = histories[index % len(histories)]
        documents.append(SnapshotEntity("activity", f"{entity_id}-{index}", doc.save()))
        size += len(documents[-1].document)
        index += 1
    chunk = SnapshotChunk(new_id(), tuple(documents))
    return {
        "push, 10 entities x 5 changes": (push, decode_client),
        "changes, 500 records": (changes, decode_server),
        f"snapshot_chunk, {len(documents)} documents": (chunk, decode_server),
    }


def _median_us(action: Callable[[], object], rounds: int) -> float:
    """Median time of one call over ``rounds`` rounds, each long enough to time well."""
    started = time.perf_counter()
    action()
    calls = max(1, int(0.05 / max(time.perf_counter() - started, 1e-7)))
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            action()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples) * 1e6


def _body() -> tuple[bytes, int]:
    """An uncompressed HTTP snapshot body of ``BODY_ENTITIES`` entities."""
    doc, _ = _history(0, 9)
    document = doc.save()
    records = [
        encode(SnapshotChunk("p", (SnapshotEntity("activity", f"a-{i}", document),)))
        for i in range(BODY_ENTITIES)
    ]
    # An entity record is the map inside a chunk's entities: cut it out of the chunk frame.
    prefix = len(encode(SnapshotChunk("p", ())))
    entity_records = [r[prefix:] for r in records]
    body = (
        encode(SnapshotBegin("p", 7, BODY_ENTITIES))
        + b"".join(entity_records)
        + encode(SnapshotEnd("p", 7))
    )
    return body, len(body)


def _read_body(body: bytes) -> None:
    stream = SnapshotStream("p", gzipped=False)
    for start in range(0, len(body), 64 * 1024):
        stream.feed(body[start : start + 64 * 1024])
    stream.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    headline = 0.0
    for name, (message, decode) in frames().items():
        frame = encode(message)
        assert decode(frame) == message
        encode_us = _median_us(lambda m=message: encode(m), args.rounds)  # type: ignore[misc]
        decode_us = _median_us(lambda f=frame, d=decode: d(f), args.rounds)  # type: ignore[misc]
        mb = len(frame) / 1e6
        print(
            f"{name} ({len(frame):,} bytes): encode {encode_us:,.1f} us "
            f"({mb / encode_us * 1e6:,.0f} MB/s), decode {decode_us:,.1f} us "
            f"({mb / decode_us * 1e6:,.0f} MB/s)"
        )
        if name.startswith("changes"):
            headline = decode_us
    body, size = _body()
    body_us = _median_us(lambda: _read_body(body), max(3, args.rounds // 3))
    print(
        f"HTTP snapshot body, {BODY_ENTITIES:,} entities ({size:,} bytes) through "
        f"SnapshotStream: {body_us / 1000:,.1f} ms ({size / body_us:,.0f} MB/s)"
    )
    print(f"decode of the 500-change frame: {headline:,.1f} us")


if __name__ == "__main__":
    main()
