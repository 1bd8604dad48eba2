"""Pure parts of sync without a server: the snapshot body decoder, HTTP parsing, repairs."""

from __future__ import annotations

import gzip

import msgpack
import pytest

from fieldsync.sync.messages import SnapshotBegin, SnapshotEnd, SnapshotEntity
from fieldsync_client.bootstrap import snapshot_url
from fieldsync_client.http_get import HttpError, parse_chunk_size, parse_head
from fieldsync_client.repair import HistoryChange, missing_hashes, with_ancestors
from fieldsync_client.snapshot_stream import SnapshotFormatError, SnapshotStream


def _body(*records: dict[str, object]) -> bytes:
    return b"".join(msgpack.packb(record) for record in records)


BEGIN: dict[str, object] = {
    "t": "snapshot_begin",
    "project_id": "p",
    "cursor": 7,
    "entity_count": 2,
}
ENTITIES: list[dict[str, object]] = [
    {"entity_type": "plan", "entity_id": "a", "document": b"doc-a"},
    {"entity_type": "location", "entity_id": "b", "document": b"doc-b" * 1000},
]
END: dict[str, object] = {"t": "snapshot_end", "project_id": "p", "cursor": 7}


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_snapshot_body_is_read_in_pieces_of_any_size(gzipped: bool) -> None:
    body = _body(BEGIN, *ENTITIES, END)
    if gzipped:
        body = gzip.compress(body)
    stream = SnapshotStream("p", gzipped=gzipped)
    records = []
    for start in range(0, len(body), 7):
        records.extend(stream.feed(body[start : start + 7]))
    assert stream.finish() == SnapshotEnd("p", 7)
    assert records == [
        SnapshotBegin("p", 7, 2),
        SnapshotEntity("plan", "a", b"doc-a"),
        SnapshotEntity("location", "b", b"doc-b" * 1000),
        SnapshotEnd("p", 7),
    ]


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ([ENTITIES[0], END], "does not start with snapshot_begin"),
        ([{**BEGIN, "project_id": "q"}, END], "another project"),
        ([BEGIN, *ENTITIES, {**END, "cursor": 8}], "cursor 8"),
        ([BEGIN, ENTITIES[0], END], "1 entities arrived"),
        ([BEGIN, *ENTITIES, END, ENTITIES[0]], "follows snapshot_end"),
        ([BEGIN, {**ENTITIES[0], "entity_id": "bad id"}], "invalid entity id"),
        ([BEGIN, {**ENTITIES[0], "document": "text"}], "document: expected bytes"),
        ([BEGIN, {"t": "changes"}], "unexpected record"),
        ([{**BEGIN, "cursor": -1}], "cursor: must be >= 0"),
        ([BEGIN, *ENTITIES, {**END, "project_id": "q"}], "another project"),
    ],
)
def test_a_malformed_snapshot_body_is_refused(
    records: list[dict[str, object]], problem: str
) -> None:
    def read() -> None:
        stream = SnapshotStream("p", gzipped=False)
        stream.feed(_body(*records))
        stream.finish()

    with pytest.raises(SnapshotFormatError, match=problem):
        read()


def test_a_truncated_snapshot_body_is_refused() -> None:
    body = gzip.compress(_body(BEGIN, *ENTITIES, END))
    stream = SnapshotStream("p", gzipped=True)
    stream.feed(body[: len(body) // 2])
    with pytest.raises(SnapshotFormatError, match="truncated"):
        stream.finish()
    plain = SnapshotStream("p", gzipped=False)
    plain.feed(_body(BEGIN, *ENTITIES))
    with pytest.raises(SnapshotFormatError, match="before snapshot_end"):
        plain.finish()
    with pytest.raises(SnapshotFormatError, match="gzip"):
        SnapshotStream("p", gzipped=True).feed(b"not gzip at all")


def test_http_heads_and_chunk_sizes() -> None:
    status, headers = parse_head(
        b"HTTP/1.1 200 OK",
        [b"Content-Type: x", b"Vary: Accept-Encoding", b"vary: Cookie", b'ETag: "p:7"'],
    )
    assert status == 200
    assert headers == {"content-type": "x", "vary": "Accept-Encoding, Cookie", "etag": '"p:7"'}
    assert parse_head(b"HTTP/1.0 404 Not Found", [])[0] == 404
    with pytest.raises(HttpError, match="status line"):
        parse_head(b"SSH-2.0-OpenSSH", [])
    with pytest.raises(HttpError, match="header"):
        parse_head(b"HTTP/1.1 200 OK", [b"no colon here"])
    assert parse_chunk_size(b"1a2f") == 0x1A2F
    assert parse_chunk_size(b"10;name=value") == 16
    assert parse_chunk_size(b"0") == 0
    with pytest.raises(HttpError, match="chunk size"):
        parse_chunk_size(b"zz")


def test_the_snapshot_url_sits_next_to_the_sync_endpoint() -> None:
    assert snapshot_url("ws://127.0.0.1:8000/sync", "p-1") == (
        "http://127.0.0.1:8000/projects/p-1/snapshot"
    )
    assert snapshot_url("wss://h.example.org/fs/sync", "a/b") == (
        "https://h.example.org/fs/projects/a%2Fb/snapshot"
    )


def _change(name: str, *deps: str) -> HistoryChange:
    return HistoryChange(
        name.encode(), tuple(d.encode() for d in deps), b"bytes of " + name.encode()
    )


def test_a_repair_takes_the_missing_changes_and_their_ancestors_in_order() -> None:
    # a <- b <- d, a <- c <- d (two branches merged), then e on d; f on its own.
    history = [
        _change("a"),
        _change("f"),
        _change("b", "a"),
        _change("c", "a"),
        _change("d", "b", "c"),
        _change("e", "d"),
    ]
    picked = with_ancestors(history, frozenset({b"c"}))
    assert picked is not None
    assert [c.hash for c in picked] == [b"a", b"c"]
    picked = with_ancestors(history, frozenset({b"d"}))
    assert picked is not None
    assert [c.hash for c in picked] == [b"a", b"b", b"c", b"d"]
    assert with_ancestors(history, frozenset({b"d", b"unknown"})) is None

    assert missing_hashes({"missing": ["ab" * 32, "cd" * 32]}) == frozenset(
        {
            bytes.fromhex("ab" * 32),
            bytes.fromhex("cd" * 32),
        }
    )
    unreadables: list[dict[str, object]] = [
        {},
        {"missing": []},
        {"missing": ["zz" * 32]},
        {"missing": [1]},
    ]
    for unreadable in unreadables:
        assert missing_hashes(unreadable) is None
