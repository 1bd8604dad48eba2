"""The server protocol without I/O: records in, frames out, every ordering rule checked."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.connection import ConnectionState
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    ChangeRecord,
    Changes,
    ConflictRecord,
    Conflicts,
    EntityAccepted,
    Error,
    Hello,
    ProjectCursor,
    ProjectError,
    Push,
    PushResult,
    ServerMessage,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotEntity,
    Status,
    Subscribe,
    Synced,
    Unsubscribe,
    Welcome,
)
from fieldsync.sync.server_protocol import (
    CONFLICTS_PER_FRAME,
    SNAPSHOT_CHUNK_BYTES,
    ConflictRecordAt,
    Lane,
    Outgoing,
    ProtocolMisuseError,
    ServerProtocol,
    SnapshotWriter,
    StreamState,
    prepare_changes,
)

P = "0b6f3c1e-9a2d-4f57-8c1b-2e7d4a9f0c35"
OTHER = "5d1c8e2a-3b4f-4e6a-9c7d-8e9f0a1b2c3d"


def opened() -> ServerProtocol:
    protocol = ServerProtocol()
    protocol.receive_frame(encode(Hello((1,), "token", "tablet-1")))
    [hello] = protocol.events_received()
    assert isinstance(hello, Hello)
    protocol.accept(Welcome(1, "user", "session", {"max_frame_bytes": 1}))
    [welcome] = protocol.data_to_send()
    assert (welcome.kind, welcome.lane) == ("welcome", Lane.CONTROL)
    return protocol


def sent(outgoing: list[Outgoing]) -> list[tuple[Lane, ServerMessage]]:
    return [(o.lane, decode_server(o.frame)) for o in outgoing]


def messages(outgoing: list[Outgoing]) -> list[ServerMessage]:
    return [decode_server(o.frame) for o in outgoing]


def record(seq: int, size: int = 10) -> ChangeRecord:
    return ChangeRecord(seq, "activity", f"act-{seq % 3}", bytes([seq % 256]) * size)


def conflict(conflict_id: str, status: str = "open") -> ConflictRecord:
    return ConflictRecord(conflict_id, status, "concurrent_edit", ("act-1",), ("title",), 3)


def entity(n: int, size: int = 100) -> SnapshotEntity:
    return SnapshotEntity("activity", f"act-{n}", b"d" * size)


# -- snapshot, catch-up, live ----------------------------------------------------------------


def test_a_snapshot_goes_out_bracketed_chunked_with_its_conflicts_then_catch_up_then_synced() -> (
    None
):
    protocol = opened()
    big = SNAPSHOT_CHUNK_BYTES // 2
    frames = protocol.begin_snapshot(P, 41, 3)
    frames += protocol.snapshot_entities(P, [entity(1, big), entity(2, big)])
    frames += protocol.snapshot_entities(P, [entity(3)])
    frames += protocol.snapshot_conflicts(P, [conflict("c1")])
    frames += protocol.end_snapshot(P)
    assert protocol.stream_state(P) is StreamState.CATCHING_UP
    frames += protocol.catch_up(P, [record(42), record(43)])
    frames += protocol.go_live(P)

    out = sent(frames)
    kinds = [(lane, type(m)) for lane, m in out]
    assert kinds == [
        (Lane.BULK, SnapshotBegin),
        (Lane.BULK, SnapshotChunk),  # two halves reach the chunk budget
        (Lane.BULK, SnapshotChunk),  # the rest, flushed before the conflicts
        (Lane.BULK, Conflicts),
        (Lane.BULK, SnapshotEnd),
        (Lane.BULK, Changes),
        (Lane.CONTROL, Synced),
    ]
    chunks = [m for _, m in out if isinstance(m, SnapshotChunk)]
    assert [len(c.entities) for c in chunks] == [2, 1]
    assert out[4][1] == SnapshotEnd(P, 41)
    assert out[-1][1] == Synced(P, 43)
    assert protocol.cursor(P) == 43


def test_a_snapshot_holds_exactly_the_announced_entities_and_conflicts_come_after_them() -> None:
    protocol = opened()
    protocol.begin_snapshot(P, 5, 2)
    with pytest.raises(ProtocolMisuseError, match="before all 2 entities"):
        protocol.snapshot_conflicts(P, [])
    protocol.snapshot_entities(P, [entity(1)])
    with pytest.raises(ProtocolMisuseError, match="after 1 of 2"):
        protocol.end_snapshot(P)
    with pytest.raises(ProtocolMisuseError, match="announced 2 entities, got 3"):
        protocol.snapshot_entities(P, [entity(2), entity(3)])
    with pytest.raises(ProtocolMisuseError, match="not catching_up"):
        protocol.catch_up(P, [record(6)])
    with pytest.raises(ProtocolMisuseError, match="not catching_up"):
        protocol.go_live(P)
    protocol.snapshot_entities(P, [entity(2)])
    protocol.snapshot_conflicts(P, [])
    with pytest.raises(ProtocolMisuseError, match="entities after its conflict records"):
        protocol.snapshot_entities(P, [])
    protocol.end_snapshot(P)


def test_catch_up_starts_right_after_the_cursor_and_sends_conflict_updates_first() -> None:
    protocol = opened()
    protocol.resume(P, 10)
    with pytest.raises(ProtocolMisuseError, match="from seq 12; the client holds 10"):
        protocol.catch_up(P, [record(12)])
    with pytest.raises(ProtocolMisuseError, match="from seq 10"):
        protocol.catch_up(P, [record(10)])
    updates = [
        ConflictRecordAt(11, conflict("c1")),
        ConflictRecordAt(12, conflict("c2")),
        ConflictRecordAt(12, conflict("c1", "resolved")),
    ]
    [(_, first), (_, second)] = sent(protocol.catch_up(P, [record(11), record(12)], updates))
    assert first == Conflicts(P, (conflict("c2"), conflict("c1", "resolved")))  # latest, once
    assert isinstance(second, Changes)
    assert [c.seq for c in second.changes] == [11, 12]


def test_live_pieces_are_sent_once_cut_where_the_client_holds_part_and_never_with_a_gap() -> None:
    protocol = opened()
    protocol.resume(P, 10)
    [piece] = prepare_changes(P, [record(11)])
    assert protocol.deliver_live(P, piece) == []  # live only after synced
    assert sent(protocol.go_live(P)) == [(Lane.CONTROL, Synced(P, 10))]

    [whole] = prepare_changes(P, [record(11), record(12)])
    [out] = protocol.deliver_live(P, whole)
    assert out.frame is whole.frame  # encoded once for every subscriber
    assert out.lane is Lane.LIVE
    assert protocol.deliver_live(P, whole) == []  # it holds it all now

    [overlap] = prepare_changes(P, [record(12), record(13)])
    [cut] = messages(protocol.deliver_live(P, overlap))
    assert isinstance(cut, Changes)
    assert [c.seq for c in cut.changes] == [13]

    [gap] = prepare_changes(P, [record(15)])
    with pytest.raises(ProtocolMisuseError, match="would leave a gap after 13"):
        protocol.deliver_live(P, gap)


def test_live_conflict_updates_of_pushes_the_client_has_not_seen_go_first() -> None:
    protocol = opened()
    protocol.resume(P, 10)
    protocol.go_live(P)
    [piece] = prepare_changes(P, [record(10), record(11)])
    updates = [ConflictRecordAt(10, conflict("old")), ConflictRecordAt(11, conflict("new"))]
    out = messages(protocol.deliver_live(P, piece, updates))
    assert out[0] == Conflicts(P, (conflict("new"),))
    assert isinstance(out[1], Changes)
    assert [c.seq for c in out[1].changes] == [11]


def test_an_unsubscribe_ends_the_stream_and_work_still_under_way_sends_nothing() -> None:
    protocol = opened()
    protocol.begin_snapshot(P, 3, 1)
    protocol.receive_frame(encode(Unsubscribe(P.upper())))  # any spelling of the id
    assert protocol.events_received() == [Unsubscribe(P.upper())]
    assert protocol.stream_state(P) is None
    assert protocol.snapshot_entities(P, [entity(1)]) == []
    assert protocol.end_snapshot(P) == []
    [piece] = prepare_changes(P, [record(4)])
    assert protocol.deliver_live(P, piece) == []
    protocol.resume(P, 3)  # subscribed again later: a new stream
    assert protocol.stream_state(P) is StreamState.CATCHING_UP


def test_a_project_error_ends_the_stream_and_a_project_streams_once_at_a_time() -> None:
    protocol = opened()
    protocol.resume(P, 0)
    with pytest.raises(ProtocolMisuseError, match="streaming already"):
        protocol.begin_snapshot(P, 0, 0)
    out = protocol.end_stream(P, ErrorCode.MEMBERSHIP_REMOVED, "removed", P.upper())
    assert sent(out) == [(Lane.CONTROL, ProjectError(P.upper(), "membership_removed", "removed"))]
    assert protocol.streams() == []
    out = protocol.end_stream("not-a-uuid", ErrorCode.PROJECT_UNAVAILABLE, "no such project")
    assert sent(out)[0][1] == ProjectError("not-a-uuid", "project_unavailable", "no such project")


def test_streams_and_answers_need_an_open_connection() -> None:
    protocol = ServerProtocol()
    with pytest.raises(ProtocolMisuseError, match="before the handshake"):
        protocol.resume(P, 0)
    with pytest.raises(ProtocolMisuseError, match="before the handshake"):
        protocol.status(Status("degraded", "database_unavailable"))


# -- pushes ------------------------------------------------------------------------------------


def test_a_push_is_answered_once_by_result_or_refusal() -> None:
    protocol = opened()
    for push_id in (1, 2, 3):
        protocol.receive_frame(encode(Push(push_id, P, ())))
    assert len(protocol.events_received()) == 3
    frames = protocol.answer_push(1, P, [EntityAccepted("act-1", (42,))])
    frames += protocol.refuse_push(2, ErrorCode.SERVER_UNAVAILABLE, "try again")
    frames += protocol.refuse_message(Push(3, P, ()), ErrorCode.RATE_LIMITED, "slow down")
    out = [m for _, m in sent(frames)]
    assert out == [
        PushResult(1, P, (EntityAccepted("act-1", (42,)),)),
        Error("server_unavailable", "try again", push_id=2),
        Error("rate_limited", "slow down", push_id=3),
    ]
    with pytest.raises(ProtocolMisuseError, match="push 1 is not waiting"):
        protocol.answer_push(1, P, [])
    with pytest.raises(ProtocolMisuseError, match="push 9 is not waiting"):
        protocol.refuse_push(9, ErrorCode.FORBIDDEN, "no")
    refused = protocol.refuse_message(
        Subscribe(ProjectCursor(P, 0)), ErrorCode.RATE_LIMITED, "slow"
    )
    assert sent(refused) == [(Lane.CONTROL, Error("rate_limited", "slow"))]


def test_a_push_id_already_in_flight_is_refused_and_the_first_push_keeps_its_answer() -> None:
    protocol = opened()
    protocol.receive_frame(encode(Push(1, P, ())))
    protocol.receive_frame(encode(Push(1, OTHER, ())))  # while push 1 waits for its commit
    assert protocol.events_received() == [Push(1, P, ())]
    [refusal] = messages(protocol.data_to_send())
    assert isinstance(refusal, Error)
    assert (refusal.code, refusal.push_id) == ("invalid_message", 1)
    assert "already waiting for its answer" in refusal.message
    assert protocol.refusals_received() == [ErrorCode.INVALID_MESSAGE]
    assert messages(protocol.answer_push(1, P, [])) == [PushResult(1, P, ())]
    protocol.receive_frame(encode(Push(1, OTHER, ())))  # answered: the id is free again
    assert protocol.events_received() == [Push(1, OTHER, ())]


def test_after_a_fatal_error_nothing_more_goes_out_and_nothing_raises() -> None:
    protocol = opened()
    protocol.resume(P, 0)
    protocol.receive_frame(encode(Push(1, P, ())))
    protocol.events_received()
    protocol.fail(ErrorCode.TOO_SLOW, "resume from your cursor", CloseCode.TOO_SLOW)
    assert protocol.state is ConnectionState.CLOSING
    assert protocol.catch_up(P, [record(1)]) == []
    assert protocol.go_live(P) == []
    assert protocol.answer_push(1, P, []) == []
    assert protocol.status(Status("ok")) == []
    [(lane, error)] = sent(protocol.data_to_send())
    assert (lane, error) == (Lane.CONTROL, Error("too_slow", "resume from your cursor", True))
    assert protocol.close_requested == (CloseCode.TOO_SLOW, "too_slow")


# -- the HTTP snapshot ------------------------------------------------------------------------


def test_the_http_snapshot_has_the_same_records_and_rules() -> None:
    writer = SnapshotWriter(P, 7, 2)
    body = [writer.begin(), writer.entity(entity(1))]
    with pytest.raises(ProtocolMisuseError):
        writer.conflicts([])
    body.append(writer.entity(entity(2)))
    with pytest.raises(ProtocolMisuseError):
        writer.entity(entity(3))
    body += writer.conflicts([conflict(f"c{n}") for n in range(CONFLICTS_PER_FRAME + 1)])
    body.append(writer.end())
    with pytest.raises(ProtocolMisuseError, match="ended already"):
        writer.end()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(b"".join(body))
    records = list(unpacker)
    assert records[0] == {"t": "snapshot_begin", "project_id": P, "cursor": 7, "entity_count": 2}
    assert records[1] == {"entity_type": "activity", "entity_id": "act-1", "document": b"d" * 100}
    assert [r["t"] for r in records[3:]] == ["conflicts", "conflicts", "snapshot_end"]
    assert [len(r["conflicts"]) for r in records[3:5]] == [CONFLICTS_PER_FRAME, 1]
    assert records[-1] == {"t": "snapshot_end", "project_id": P, "cursor": 7}


# -- a property: whatever the pieces, each change exactly once, in order ---------------------


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 20),
    cuts=st.lists(st.integers(1, 60), max_size=8),
    overlaps=st.lists(st.integers(0, 5), min_size=8, max_size=8),
    live_at=st.integers(0, 8),
)
def test_catch_up_and_live_pieces_deliver_each_change_once_in_order(
    start: int, cuts: list[int], overlaps: list[int], live_at: int
) -> None:
    """The log after the client's cursor, cut into pieces: the first ones read during the
    catch-up, the rest arriving live, each live piece possibly starting before what the
    client holds (the feed read it before this client went live)."""
    end = start + 60
    bounds = sorted({start, *(start + c for c in cuts), end})
    pieces = [[record(s) for s in range(a + 1, b + 1)] for a, b in itertools.pairwise(bounds)]
    protocol = opened()
    protocol.resume(P, start)
    received: list[int] = []

    def take(out: list[Outgoing]) -> None:
        for message in messages(out):
            if isinstance(message, Changes):
                received.extend(c.seq for c in message.changes)

    live = False
    for index, piece in enumerate(pieces):
        if not piece:
            continue
        if not live and index >= live_at:
            assert [o.kind for o in protocol.go_live(P)] == ["synced"]
            live = True
        if not live:
            take(protocol.catch_up(P, piece))
            continue
        back = min(overlaps[index % 8], piece[0].seq - 1 - start)
        earlier = [record(s) for s in range(piece[0].seq - back, piece[0].seq)]
        for prepared in prepare_changes(P, earlier + piece):
            take(protocol.deliver_live(P, prepared))
    assert received == list(range(start + 1, end + 1))
    assert protocol.cursor(P) == end
