"""The client protocol without I/O: server frames in, events and client frames out, every
ordering rule checked (``docs/protocol.md``, "What the server does")."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.sync.client_protocol import (
    OUT_OF_ORDER,
    ChangesReceived,
    ClientEvent,
    ClientProtocol,
    ConflictsChanged,
    CursorAhead,
    ErrorReceived,
    ProjectFailed,
    ProjectLive,
    ProjectState,
    ProtocolFailure,
    PushAnswered,
    PushRefused,
    ServerStatus,
    SnapshotEntities,
    SnapshotFinished,
    SnapshotStarted,
    SnapshotWanted,
    Welcomed,
)
from fieldsync.sync.codec import (
    MAX_HELLO_PROJECTS,
    decode_client,
    encode,
    max_server_frame_bytes,
)
from fieldsync.sync.connection import ConnectionState, InvalidStateError
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    ChangeRecord,
    Changes,
    ClientMessage,
    ConflictRecord,
    Conflicts,
    EntityAccepted,
    EntityPush,
    EntityRejected,
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

P = "0b6f3c1e-9a2d-4f57-8c1b-2e7d4a9f0c35"
Q = "5d1c8e2a-3b4f-4e6a-9c7d-8e9f0a1b2c3d"
LIMITS = {"max_frame_bytes": 4096, "max_entities_per_batch": 8, "max_ops_per_push": 64}
WELCOME = Welcome(1, "user-1", "session-1", LIMITS)

Protocol = ClientProtocol[EntityPush]


def sent(protocol: Protocol) -> list[ClientMessage]:
    return [decode_client(frame) for frame in protocol.data_to_send()]


def feed(protocol: Protocol, *messages: ServerMessage) -> list[ClientEvent[EntityPush]]:
    for message in messages:
        protocol.receive_frame(encode(message))
    return protocol.events_received()


def opened(*projects: ProjectCursor, http: bool = False) -> Protocol:
    """A protocol past welcome, with ``projects`` in its hello; frames and events drained."""
    protocol = Protocol(http_snapshots=http)
    protocol.hello("token", "tablet-1", projects)
    feed(protocol, WELCOME)
    protocol.data_to_send()
    assert protocol.state is ConnectionState.OPEN
    return protocol


def record(seq: int) -> ChangeRecord:
    return ChangeRecord(seq, "activity", f"act-{seq % 3}", bytes([seq % 256]) * 8)


def changes(first: int, last: int, project: str = P) -> Changes:
    return Changes(project, tuple(record(seq) for seq in range(first, last + 1)))


def conflict(conflict_id: str, seq: int = 3) -> ConflictRecord:
    return ConflictRecord(conflict_id, "open", "concurrent_edit", ("act-1",), ("title",), seq)


def entity(entity_id: str) -> SnapshotEntity:
    return SnapshotEntity("activity", entity_id, b"doc-" + entity_id.encode())


def change_push(entity_id: str, count: int = 1) -> EntityPush:
    return EntityPush("activity", entity_id, tuple(bytes([i]) * 4 for i in range(count)))


def failure(events: list[ClientEvent[EntityPush]]) -> ProtocolFailure:
    assert isinstance(events[-1], ProtocolFailure), events
    return events[-1]


def assert_broken(protocol: Protocol, events: list[ClientEvent[EntityPush]], text: str) -> None:
    """The ordering rule was broken: one failure naming ``text``, a close with 1002, and
    nothing more is taken from the server."""
    broken = failure(events)
    assert broken.code == OUT_OF_ORDER
    assert text in broken.message, broken.message
    assert protocol.failure == broken
    assert protocol.close_requested == (CloseCode.PROTOCOL_ERROR, OUT_OF_ORDER)
    assert protocol.live_projects() == frozenset()
    assert feed(protocol, changes(1, 1), Status("degraded", "x")) == []


def live(protocol: Protocol, project: str = P, cursor: int = 0) -> None:
    """Catch the project (subscribed with ``cursor``) up: synced at once."""
    assert feed(protocol, Synced(project, cursor)) == [ProjectLive(project, cursor)]


# --- the handshake and subscriptions ----------------------------------------------------------


def test_hello_names_the_projects_and_welcome_opens_with_the_servers_limits() -> None:
    protocol = Protocol()
    protocol.hello("token", "tablet-1", [ProjectCursor(P, 7), ProjectCursor(Q, None)])
    [hello] = sent(protocol)
    assert hello == Hello((1,), "token", "tablet-1", (ProjectCursor(P, 7), ProjectCursor(Q, None)))
    assert protocol.project_state(P) is ProjectState.SUBSCRIBING
    assert protocol.cursor(P) == 7
    [welcomed] = feed(protocol, Welcome(1, "u", "s", {**LIMITS, "max_new_thing": 3, "max_x": 0}))
    assert isinstance(welcomed, Welcomed)
    assert welcomed.limits.max_frame_bytes == 4096
    assert welcomed.limits.max_entities_per_batch == 8
    # A limit the server does not announce keeps its default; unknown keys are ignored.
    assert welcomed.limits.max_changes_per_entity == DEFAULT_LIMITS.max_changes_per_entity
    assert protocol.server_limits == welcomed.limits
    assert sent(protocol) == []  # the hello subscribed both already


def test_a_hello_names_at_most_its_limit_of_projects_and_the_rest_follow_welcome() -> None:
    ids = [f"project-{i}" for i in range(MAX_HELLO_PROJECTS + 2)]
    protocol = Protocol()
    protocol.hello("token", "tablet-1", [ProjectCursor(p, 1) for p in ids])
    [hello] = sent(protocol)
    assert isinstance(hello, Hello)
    assert [p.project_id for p in hello.projects] == ids[:MAX_HELLO_PROJECTS]
    assert protocol.project_state(ids[-1]) is ProjectState.QUEUED
    feed(protocol, WELCOME)
    assert sent(protocol) == [Subscribe(ProjectCursor(p, 1)) for p in ids[MAX_HELLO_PROJECTS:]]
    assert protocol.project_state(ids[-1]) is ProjectState.SUBSCRIBING


def test_intents_before_welcome_wait_for_it() -> None:
    protocol = Protocol()
    protocol.hello("token", "tablet-1", [ProjectCursor(P, 3)])
    protocol.data_to_send()
    protocol.subscribe(Q, 5)
    protocol.unsubscribe(P)  # named in the hello: the server streams it until told
    assert sent(protocol) == []
    with pytest.raises(InvalidStateError):
        protocol.push(Q, [change_push("a")])
    feed(protocol, WELCOME)
    assert sent(protocol) == [Unsubscribe(P), Subscribe(ProjectCursor(Q, 5))]
    assert feed(protocol, changes(4, 4)) == []  # P's stream was on its way: ignored


def test_subscribing_twice_is_ignored_and_unsubscribing_says_so_once() -> None:
    protocol = opened()
    protocol.subscribe(P, 2)
    protocol.subscribe(P, 9)
    assert sent(protocol) == [Subscribe(ProjectCursor(P, 2))]
    protocol.unsubscribe(P)
    protocol.unsubscribe(P)
    assert sent(protocol) == [Unsubscribe(P)]
    assert protocol.project_state(P) is None


def test_anything_but_welcome_or_error_before_welcome_breaks_the_protocol() -> None:
    protocol = Protocol()
    protocol.hello("token", "tablet-1", [ProjectCursor(P, 0)])
    [broken] = feed(protocol, Synced(P, 0))
    assert isinstance(broken, ProtocolFailure)
    assert broken.code == ErrorCode.HANDSHAKE_REQUIRED
    assert protocol.close_requested == (CloseCode.PROTOCOL_ERROR, "handshake_required")


def test_an_unreadable_frame_breaks_the_protocol_with_its_code() -> None:
    protocol = opened(ProjectCursor(P, 0))
    protocol.receive_frame(encode(Synced(P, 0))[:-2])
    [broken] = protocol.events_received()
    assert isinstance(broken, ProtocolFailure)
    assert broken.code == ErrorCode.MALFORMED_FRAME
    assert protocol.close_requested == (CloseCode.PROTOCOL_ERROR, "malformed_frame")
    protocol = opened(ProjectCursor(P, 0))
    protocol.receive_frame(b"\x00" * (max_server_frame_bytes(DEFAULT_LIMITS) + 1))
    [broken] = protocol.events_received()
    assert isinstance(broken, ProtocolFailure)
    assert protocol.close_requested == (CloseCode.MESSAGE_TOO_BIG, "frame_too_large")


def test_a_fatal_error_is_reported_and_closes() -> None:
    protocol = opened(ProjectCursor(P, 0))
    events = feed(protocol, Error("token_expired", "expired", fatal=True), Synced(P, 0))
    assert events == [ErrorReceived("token_expired", "expired", True)]
    assert protocol.close_requested == (CloseCode.NORMAL, "token_expired")
    assert protocol.closing


def test_after_a_local_close_nothing_goes_in_or_out() -> None:
    protocol = opened(ProjectCursor(P, 0))
    protocol.close(CloseCode.NORMAL, "resuming from the stored cursor")
    assert feed(protocol, Synced(P, 0)) == []
    protocol.subscribe(Q, 1)
    assert protocol.push(P, [change_push("a")]) is None
    assert sent(protocol) == []
    protocol.connection_closed()
    assert protocol.state is ConnectionState.CLOSED


def test_status_says_what_is_wrong_on_the_server() -> None:
    protocol = opened()
    [degraded, ok] = feed(
        protocol, Status("degraded", "database_unavailable", "db down"), Status("ok")
    )
    assert isinstance(degraded, ServerStatus)
    assert degraded.problem == "database_unavailable"
    assert isinstance(ok, ServerStatus)
    assert ok.problem is None
    assert ServerStatus("sideways", "", "").problem == "degraded"


# --- snapshots ------------------------------------------------------------------------------------


def test_a_snapshot_bracket_stages_its_conflicts_and_ends_at_its_cursor() -> None:
    protocol = opened(ProjectCursor(P, None))
    events = feed(
        protocol,
        SnapshotBegin(P, 41, 3),
        SnapshotChunk(P, (entity("a"), entity("b"))),
        SnapshotChunk(P, (entity("c"),)),
        Conflicts(P, (conflict("c1"),)),
        Conflicts(P, (conflict("c2"),)),
    )
    assert events == [
        SnapshotStarted(P, 41, 3),
        SnapshotEntities(P, (entity("a"), entity("b"))),
        SnapshotEntities(P, (entity("c"),)),
    ]
    assert protocol.project_state(P) is ProjectState.SNAPSHOT
    assert feed(protocol, SnapshotEnd(P, 41)) == [
        SnapshotFinished(P, 41, (conflict("c1"), conflict("c2")))
    ]
    assert protocol.project_state(P) is ProjectState.CATCHING_UP
    assert feed(protocol, changes(42, 43)) == [ChangesReceived(P, changes(42, 43).changes)]
    assert feed(protocol, Synced(P, 43)) == [ProjectLive(P, 43)]
    assert protocol.live_projects() == {P}


def test_an_empty_project_snapshots_with_no_chunk() -> None:
    protocol = opened(ProjectCursor(P, None))
    events = feed(protocol, SnapshotBegin(P, 0, 0), SnapshotEnd(P, 0), Synced(P, 0))
    assert events == [SnapshotStarted(P, 0, 0), SnapshotFinished(P, 0, ()), ProjectLive(P, 0)]


@pytest.mark.parametrize(
    ("inside", "text"),
    [
        (changes(1, 1), "in the middle of a snapshot"),
        (Synced(P, 5), "before its snapshot ended"),
        (SnapshotBegin(P, 5, 1), "snapshot_begin of"),
        (SnapshotEnd(P, 6), "began at cursor 5 and ended at 6"),
    ],
)
def test_inside_a_snapshot_only_its_chunks_conflicts_and_end_may_come(
    inside: ServerMessage, text: str
) -> None:
    protocol = opened(ProjectCursor(P, None))
    feed(protocol, SnapshotBegin(P, 5, 1), SnapshotChunk(P, (entity("a"),)))
    assert_broken(protocol, feed(protocol, inside), text)


def test_chunks_and_ends_come_only_inside_a_bracket() -> None:
    for stray in (SnapshotChunk(P, (entity("a"),)), SnapshotEnd(P, 0)):
        protocol = opened(ProjectCursor(P, None))
        assert_broken(protocol, feed(protocol, stray), "outside a snapshot")
        protocol = opened(ProjectCursor(P, None))
        feed(protocol, SnapshotBegin(P, 0, 0), SnapshotEnd(P, 0))
        assert_broken(protocol, feed(protocol, stray), "outside a snapshot")


def test_a_snapshot_comes_once_and_only_for_a_subscription_without_a_cursor() -> None:
    protocol = opened(ProjectCursor(P, None))
    feed(protocol, SnapshotBegin(P, 0, 0), SnapshotEnd(P, 0))
    assert_broken(protocol, feed(protocol, SnapshotBegin(P, 0, 0)), "snapshot_begin of")
    protocol = opened(ProjectCursor(P, 4))
    assert_broken(protocol, feed(protocol, SnapshotBegin(P, 9, 0)), "from cursor 4")


def test_a_snapshot_carries_exactly_the_entities_it_announced() -> None:
    protocol = opened(ProjectCursor(P, None))
    feed(protocol, SnapshotBegin(P, 5, 2), SnapshotChunk(P, (entity("a"),)))
    assert_broken(
        protocol,
        feed(protocol, SnapshotChunk(P, (entity("b"), entity("c")))),
        "announced 2 entities",
    )
    protocol = opened(ProjectCursor(P, None))
    feed(protocol, SnapshotBegin(P, 5, 2), SnapshotChunk(P, (entity("a"),)))
    assert_broken(protocol, feed(protocol, SnapshotEnd(P, 5)), "ended after 1")


def test_a_snapshots_conflicts_come_after_its_entities() -> None:
    protocol = opened(ProjectCursor(P, None))
    feed(protocol, SnapshotBegin(P, 5, 2), SnapshotChunk(P, (entity("a"),)))
    feed(protocol, Conflicts(P, (conflict("c1"),)))
    assert_broken(protocol, feed(protocol, SnapshotChunk(P, (entity("b"),))), "after its conflicts")


def test_nothing_of_the_stream_comes_before_the_snapshot_it_needs() -> None:
    for early, text in (
        (changes(1, 1), "changes of"),
        (Conflicts(P, (conflict("c1"),)), "conflicts of"),
        (Synced(P, 0), "synced for"),
    ):
        protocol = opened(ProjectCursor(P, None))
        assert_broken(protocol, feed(protocol, early), text)


# --- changes, conflicts, synced -------------------------------------------------------------------


def test_changes_continue_from_the_cursor_and_the_stream_goes_live_at_its_cursor() -> None:
    protocol = opened(ProjectCursor(P, 10))
    assert protocol.project_state(P) is ProjectState.SUBSCRIBING
    [received] = feed(protocol, changes(11, 13))
    assert isinstance(received, ChangesReceived)
    assert received.cursor == 13
    assert protocol.project_state(P) is ProjectState.CATCHING_UP
    assert feed(protocol, Changes(P, ())) == []  # nothing to apply
    assert feed(protocol, changes(14, 14), Synced(P, 14)) == [
        ChangesReceived(P, changes(14, 14).changes),
        ProjectLive(P, 14),
    ]
    assert feed(protocol, changes(15, 16)) == [ChangesReceived(P, changes(15, 16).changes)]
    assert protocol.cursor(P) == 16


@pytest.mark.parametrize(
    ("batch", "text"),
    [
        (changes(12, 12), "expected seq 11, got 12"),  # a gap
        (changes(10, 11), "expected seq 11, got 10"),  # an overlap
        (Changes(P, (record(11), record(13))), "expected seq 12, got 13"),  # a gap inside
        (Changes(P, (record(11), record(11))), "expected seq 12, got 11"),  # a repeat inside
    ],
)
def test_a_gap_or_an_overlap_breaks_the_stream(batch: Changes, text: str) -> None:
    protocol = opened(ProjectCursor(P, 10))
    assert_broken(protocol, feed(protocol, batch), text)
    assert protocol.cursor(P) == 10  # nothing of the batch was taken


def test_a_gap_after_going_live_breaks_the_stream_too() -> None:
    protocol = opened(ProjectCursor(P, 10))
    live(protocol, cursor=10)
    feed(protocol, changes(11, 12))
    assert_broken(protocol, feed(protocol, changes(14, 14)), "expected seq 13, got 14")


def test_synced_names_the_cursor_we_hold_and_comes_once() -> None:
    protocol = opened(ProjectCursor(P, 10))
    feed(protocol, changes(11, 11))
    assert_broken(protocol, feed(protocol, Synced(P, 12)), "says we hold seq 12")
    protocol = opened(ProjectCursor(P, 10))
    live(protocol, cursor=10)
    assert_broken(protocol, feed(protocol, Synced(P, 10)), "a second synced")


def test_conflicts_come_before_the_changes_they_belong_to() -> None:
    protocol = opened(ProjectCursor(P, 2))
    events = feed(
        protocol, Conflicts(P, (conflict("c1"),)), Conflicts(P, (conflict("c2"),)), changes(3, 3)
    )
    assert events == [
        ConflictsChanged(P, (conflict("c1"),)),
        ConflictsChanged(P, (conflict("c2"),)),
        ChangesReceived(P, changes(3, 3).changes),
    ]
    assert feed(protocol, Synced(P, 3)) == [ProjectLive(P, 3)]
    feed(protocol, Conflicts(P, (conflict("c3", 4),)))
    assert feed(protocol, changes(4, 4)) == [ChangesReceived(P, changes(4, 4).changes)]


def test_synced_may_not_come_between_conflicts_and_their_changes() -> None:
    protocol = opened(ProjectCursor(P, 2))
    feed(protocol, Conflicts(P, (conflict("c1"),)))
    assert_broken(protocol, feed(protocol, Synced(P, 2)), "between conflicts and their changes")


def test_projects_are_checked_apart_and_may_interleave() -> None:
    protocol = opened(ProjectCursor(P, 0), ProjectCursor(Q, None))
    events = feed(
        protocol,
        SnapshotBegin(Q, 7, 1),
        changes(1, 1),  # P's catch-up in the middle of Q's snapshot
        SnapshotChunk(Q, (entity("a"),)),
        Synced(P, 1),
        SnapshotEnd(Q, 7),
        changes(8, 8, Q),
        changes(2, 2),
        Synced(Q, 8),
    )
    assert [type(e).__name__ for e in events] == [
        "SnapshotStarted",
        "ChangesReceived",
        "SnapshotEntities",
        "ProjectLive",
        "SnapshotFinished",
        "ChangesReceived",
        "ChangesReceived",
        "ProjectLive",
    ]
    assert protocol.live_projects() == {P, Q}
    assert protocol.failure is None


# --- unsubscribed projects and project errors -----------------------------------------------------


def test_whatever_comes_for_an_unsubscribed_project_is_ignored() -> None:
    protocol = opened(ProjectCursor(P, None))
    feed(protocol, SnapshotBegin(P, 5, 2), SnapshotChunk(P, (entity("a"),)))
    protocol.unsubscribe(P)
    assert sent(protocol) == [Unsubscribe(P)]
    stray = (
        SnapshotChunk(P, (entity("b"), entity("c"), entity("d"))),
        Conflicts(P, (conflict("c1"),)),
        SnapshotEnd(P, 9),
        changes(40, 40),
        Synced(P, 3),
        ProjectError(P, "membership_removed", "gone"),
        changes(1, 1, Q),  # never subscribed
    )
    assert feed(protocol, *stray) == []
    assert protocol.failure is None
    protocol.subscribe(P, None)  # a new stream, checked from its start
    assert sent(protocol) == [Subscribe(ProjectCursor(P, None))]
    assert feed(protocol, SnapshotBegin(P, 9, 0)) == [SnapshotStarted(P, 9, 0)]


@pytest.mark.parametrize(
    "code", ["project_unavailable", "membership_removed", "server_unavailable"]
)
def test_a_project_error_ends_the_stream(code: str) -> None:
    protocol = opened(ProjectCursor(P, 3))
    feed(protocol, Conflicts(P, (conflict("c1"),)))  # its changes never come
    assert feed(protocol, ProjectError(P, code, "why")) == [ProjectFailed(P, code, "why")]
    assert protocol.project_state(P) is None
    assert feed(protocol, changes(9, 9)) == []
    protocol.subscribe(P, 3)  # try again
    assert sent(protocol) == [Subscribe(ProjectCursor(P, 3))]
    assert feed(protocol, changes(4, 4)) == [ChangesReceived(P, changes(4, 4).changes)]


def test_cursor_ahead_asks_for_a_snapshot_in_place_of_the_cursor() -> None:
    protocol = opened(ProjectCursor(P, 50))
    protocol.push(P, [change_push("a")])
    protocol.data_to_send()
    feed(protocol, PushResult(1, P, (EntityAccepted("a", (50,)),)))
    assert protocol.acknowledged_seq(P) == 50
    events = feed(protocol, ProjectError(P, "cursor_ahead", "cursor 50 is beyond 30"))
    assert events == [CursorAhead(P, "cursor 50 is beyond 30")]
    assert sent(protocol) == [Subscribe(ProjectCursor(P, None))]
    assert protocol.acknowledged_seq(P) == 0  # seqs of the other log
    assert protocol.project_state(P) is ProjectState.SUBSCRIBING
    events = feed(protocol, SnapshotBegin(P, 30, 0), SnapshotEnd(P, 30), Synced(P, 30))
    assert events[-1] == ProjectLive(P, 30)


# --- snapshots over HTTP --------------------------------------------------------------------------


def test_a_project_without_a_cursor_fetches_its_snapshot_over_http_then_subscribes() -> None:
    protocol = Protocol(http_snapshots=True)
    protocol.hello("token", "tablet-1", [ProjectCursor(P, None), ProjectCursor(Q, 2)])
    [hello] = sent(protocol)
    assert isinstance(hello, Hello)
    assert hello.projects == (ProjectCursor(Q, 2),)
    events = feed(protocol, WELCOME)
    assert events[1:] == [SnapshotWanted(P)]
    assert protocol.project_state(P) is ProjectState.FETCHING
    assert sent(protocol) == []
    assert feed(protocol, changes(1, 1), SnapshotEnd(P, 1)) == []  # not subscribed yet
    protocol.snapshot_fetched(P, 12)
    assert sent(protocol) == [Subscribe(ProjectCursor(P, 12))]
    assert feed(protocol, changes(13, 13), Synced(P, 13))[-1] == ProjectLive(P, 13)
    protocol.snapshot_fetched(P, 99)  # not fetching any more: ignored
    assert sent(protocol) == []


def test_a_failed_http_snapshot_comes_over_the_websocket_for_the_rest_of_the_connection() -> None:
    protocol = opened(http=True)
    protocol.subscribe(P, None)
    assert protocol.events_received() == [SnapshotWanted(P)]
    protocol.snapshot_fetch_failed(P)
    assert sent(protocol) == [Subscribe(ProjectCursor(P, None))]
    feed(protocol, ProjectError(P, "server_unavailable", "later"))
    protocol.subscribe(P, None)
    assert protocol.events_received() == []
    assert sent(protocol) == [Subscribe(ProjectCursor(P, None))]


def test_unsubscribing_while_fetching_sends_nothing() -> None:
    protocol = opened(http=True)
    protocol.subscribe(P, None)
    protocol.unsubscribe(P)
    protocol.snapshot_fetched(P, 4)
    assert sent(protocol) == []
    assert protocol.project_state(P) is None


def test_without_http_snapshots_a_project_without_a_cursor_subscribes_at_once() -> None:
    protocol = opened()
    protocol.subscribe(P, None)
    assert protocol.events_received() == []
    assert sent(protocol) == [Subscribe(ProjectCursor(P, None))]


# --- pushes ---------------------------------------------------------------------------------------


def test_pushes_get_ids_and_their_answers_come_back_with_what_they_carried() -> None:
    protocol = opened()
    a, b = change_push("a", 2), change_push("b")
    assert protocol.push(P, [a, b]) == 1
    assert protocol.push(Q, []) == 2
    assert sent(protocol) == [Push(1, P, (a, b)), Push(2, Q, ())]
    assert protocol.pushing(P)
    assert protocol.pushes_in_flight() == 2
    assert protocol.in_flight(P) == [a, b]
    rejected = EntityRejected("b", "schema_violation", "no", {"field": "title"})
    events = feed(
        protocol,
        PushResult(
            1,
            P,
            (
                rejected,
                EntityAccepted("zz", (99,)),  # not in the push: ignored
                EntityAccepted("a", (7, 5)),
                EntityAccepted("a", (8,)),  # answered twice: ignored
            ),
        ),
    )
    assert events == [PushAnswered(1, P, (a, b), ((b, rejected), (a, EntityAccepted("a", (7, 5)))))]
    assert not protocol.pushing(P)
    assert protocol.acknowledged_seq(P) == 7
    assert feed(protocol, PushResult(1, P, ()), PushResult(77, P, ())) == []  # not waiting
    assert protocol.pushes_in_flight() == 1


def test_a_push_result_names_the_push_s_project() -> None:
    protocol = opened()
    protocol.push(P, [change_push("a")])
    assert_broken(protocol, feed(protocol, PushResult(1, Q, ())), "its result names")


def test_a_push_names_each_entity_once() -> None:
    protocol = opened()
    with pytest.raises(ValueError, match="once"):
        protocol.push(P, [change_push("a"), change_push("a")])


def test_a_refused_push_says_whether_to_retry_or_split() -> None:
    protocol = opened()
    a, b = change_push("a", 3), change_push("b")
    budget = protocol.push_budget()
    assert (budget.max_entities, budget.max_bytes, budget.max_ops) == (8, 4096, 64)
    protocol.push(P, [a, b])
    [refused] = feed(protocol, Error("too_many_entities", "split it", push_id=1))
    assert refused == PushRefused(1, P, (a, b), "too_many_entities", "split it", False, False, True)
    halved = protocol.push_budget()
    assert (halved.max_entities, halved.max_bytes, halved.max_ops) == (4, 2048, 32)
    protocol.push(P, [b])  # one change: cannot be split
    [refused] = feed(protocol, Error("frame_too_large", "big", push_id=2))
    assert isinstance(refused, PushRefused)
    assert not refused.split
    assert protocol.push_budget() == halved
    protocol.push(P, [b])
    [refused] = feed(protocol, Error("server_unavailable", "db", push_id=3))
    assert isinstance(refused, PushRefused)
    assert refused.retry
    protocol.push(P, [b])
    feed(protocol, PushResult(4, P, (EntityAccepted("b", (1,)),)))
    assert protocol.push_budget() == budget  # an answer resets the cut


def test_an_error_about_no_push_in_flight_is_an_ordinary_error() -> None:
    protocol = opened()
    assert feed(protocol, Error("rate_limited", "slow", push_id=9)) == [
        ErrorReceived("rate_limited", "slow", False)
    ]


def test_pushes_need_an_open_connection() -> None:
    protocol = Protocol()
    with pytest.raises(InvalidStateError):
        protocol.push(P, [])


# --- a model server against the protocol ---------------------------------------------------------

PROJECTS = (P, Q)
CHUNK = 2  # entities per snapshot chunk of the model server


class _ServerStream:
    """What the model server will still send for one subscription, planned lazily."""

    def __init__(self, cursor: int | None) -> None:
        self.needs_snapshot = cursor is None
        self.cursor = cursor if cursor is not None else 0
        self.live = False
        self.queue: list[ServerMessage] = []


class ClientAgainstModelServer(RuleBasedStateMachine):
    """A server that keeps every rule streams the projects' logs (snapshots, catch-up in
    random batches with their conflicts first, live changes, push results, project errors,
    unsubscribes with frames still on their way), interleaved at random; now and then it
    breaks a rule. The test plays the shell: it stores what the events say, and reconnects
    after a failure from the cursors it stored.

    Whatever happens, the store holds a gapless prefix of each log with every conflict record
    of it, a failure comes exactly when a rule was broken, and a settled connection ends with
    every project live at the head of its log."""

    def __init__(self) -> None:
        super().__init__()
        self.head = dict.fromkeys(PROJECTS, 0)
        self.conflict_at: dict[str, dict[int, ConflictRecord]] = {p: {} for p in PROJECTS}
        self.stored: dict[str, int | None] = dict.fromkeys(PROJECTS, None)
        self.held: dict[str, list[int]] = {p: [] for p in PROJECTS}
        self.conflicts: dict[str, set[str]] = {p: set() for p in PROJECTS}
        self.wanted = set(PROJECTS)
        self.connections = 0
        self.connect()

    # -- the connection -------------------------------------------------------------------------

    def connect(self) -> None:
        self.connections += 1
        self.protocol = Protocol()
        self.streams: dict[str, _ServerStream] = {}
        self.stray: dict[str, list[ServerMessage]] = {p: [] for p in PROJECTS}
        self.answers: list[tuple[PushResult, tuple[EntityPush, ...]]] = []
        self.snapshot_staged: dict[str, int] = {}
        self.broken = False
        wanted = [ProjectCursor(p, self.stored[p]) for p in PROJECTS if p in self.wanted]
        self.protocol.hello("token", "tablet-1", wanted)
        for project in wanted:
            self.streams[project.project_id] = _ServerStream(project.cursor)
        self.deliver(WELCOME)
        self.protocol.data_to_send()

    def deliver(self, message: ServerMessage, *, breaks: bool = False) -> None:
        for event in feed(self.protocol, message):
            self.store(event, breaks)
        if breaks:
            assert self.protocol.failure is not None, f"{message} was taken"
            assert self.protocol.close_requested == (CloseCode.PROTOCOL_ERROR, OUT_OF_ORDER)
            self.broken = True

    def store(self, event: ClientEvent[EntityPush], breaks: bool) -> None:
        """The shell: what each event asks to be stored."""
        if isinstance(event, ProtocolFailure):
            assert breaks, event
        elif isinstance(event, SnapshotStarted):
            self.snapshot_staged[event.project_id] = 0
        elif isinstance(event, SnapshotEntities):
            self.snapshot_staged[event.project_id] += len(event.entities)
        elif isinstance(event, SnapshotFinished):
            p = event.project_id
            assert self.snapshot_staged.pop(p) == event.cursor  # one entity per seq
            self.stored[p] = event.cursor
            self.held[p] = list(range(1, event.cursor + 1))
            self.conflicts[p] = {c.conflict_id for c in event.conflicts}
        elif isinstance(event, ConflictsChanged):
            for record in event.conflicts:
                assert record.opened_seq > (self.stored[event.project_id] or 0)  # ahead of us
            self.conflicts[event.project_id] |= {c.conflict_id for c in event.conflicts}
        elif isinstance(event, ChangesReceived):
            p = event.project_id
            assert event.changes[0].seq == (self.stored[p] or 0) + 1
            self.held[p].extend(r.seq for r in event.changes)
            self.stored[p] = event.cursor
        elif isinstance(event, ProjectLive):
            assert event.cursor == self.stored[event.project_id]
        elif isinstance(event, PushAnswered):
            result, carried = self.answers.pop(0)
            assert (event.push_id, event.carried) == (result.push_id, carried)
            assert [(e.entity_id, r) for e, r in event.answers] == [
                (r.entity_id, r) for r in result.results
            ]
        else:
            assert isinstance(event, Welcomed | ProjectFailed), event

    # -- the model server ---------------------------------------------------------------------

    def plan(self, project: str, batch: int) -> None:
        """Queue the next part of the project's stream, as a server keeping the rules would."""
        stream = self.streams[project]
        head = self.head[project]
        if stream.needs_snapshot:
            stream.needs_snapshot = False
            entities = [entity(f"e-{seq}") for seq in range(1, head + 1)]
            stream.queue.append(SnapshotBegin(project, head, head))
            for i in range(0, head, CHUNK):
                stream.queue.append(SnapshotChunk(project, tuple(entities[i : i + CHUNK])))
            for seq, record in self.conflict_at[project].items():
                if seq <= head:
                    stream.queue.append(Conflicts(project, (record,)))
            stream.queue.append(SnapshotEnd(project, head))
            stream.cursor = head
        elif stream.cursor < head:
            last = min(head, stream.cursor + batch)
            records = [
                self.conflict_at[project][seq]
                for seq in range(stream.cursor + 1, last + 1)
                if seq in self.conflict_at[project]
            ]
            if records:
                stream.queue.append(Conflicts(project, tuple(records)))
            stream.queue.append(changes(stream.cursor + 1, last, project))
            stream.cursor = last
        elif not stream.live:
            stream.live = True
            stream.queue.append(Synced(project, stream.cursor))

    def on_the_wire(self, project: str) -> bool:
        return self.protocol.project_state(project) in (
            ProjectState.SUBSCRIBING,
            ProjectState.SNAPSHOT,
            ProjectState.CATCHING_UP,
            ProjectState.LIVE,
        )

    # -- rules ----------------------------------------------------------------------------------

    @rule(project=st.sampled_from(PROJECTS), conflict=st.booleans())
    def commit(self, project: str, conflict: bool) -> None:
        self.head[project] += 1
        seq = self.head[project]
        if conflict:
            self.conflict_at[project][seq] = ConflictRecord(
                f"c-{project[:4]}-{seq}", "open", "concurrent_edit", ("e-1",), ("title",), seq
            )

    @precondition(lambda self: not self.broken)
    @rule(project=st.sampled_from(PROJECTS), batch=st.integers(1, 3))
    def send(self, project: str, batch: int) -> None:
        stream = self.streams.get(project)
        if stream is None:
            return
        if not stream.queue:
            self.plan(project, batch)
        if stream.queue:
            self.deliver(stream.queue.pop(0))

    @precondition(lambda self: not self.broken)
    @rule(project=st.sampled_from(PROJECTS))
    def send_stray(self, project: str) -> None:
        if self.stray[project]:
            before = self.protocol.project_state(project)
            assert feed(self.protocol, self.stray[project].pop(0)) == []
            assert self.protocol.project_state(project) is before

    @precondition(lambda self: not self.broken)
    @rule(project=st.sampled_from(PROJECTS))
    def unsubscribe(self, project: str) -> None:
        stream = self.streams.pop(project, None)
        if stream is None:
            return
        self.wanted.discard(project)
        self.protocol.unsubscribe(project)
        assert sent(self.protocol) == [Unsubscribe(project)]
        self.stray[project] = stream.queue  # already on their way
        self.snapshot_staged.pop(project, None)  # the shell drops what it staged

    @precondition(lambda self: not self.broken)
    @rule(project=st.sampled_from(PROJECTS))
    def subscribe(self, project: str) -> None:
        if project in self.streams or self.stray[project]:
            return
        self.wanted.add(project)
        self.protocol.subscribe(project, self.stored[project])
        assert sent(self.protocol) == [Subscribe(ProjectCursor(project, self.stored[project]))]
        self.streams[project] = _ServerStream(self.stored[project])

    @precondition(lambda self: not self.broken)
    @rule(project=st.sampled_from(PROJECTS))
    def end_stream(self, project: str) -> None:
        """The server ends the stream (the log cannot be read): what it had not sent yet is
        never sent."""
        if project not in self.streams:
            return
        del self.streams[project]
        self.snapshot_staged.pop(project, None)
        self.deliver(ProjectError(project, "server_unavailable", "later"))
        assert self.protocol.project_state(project) is None
        self.wanted.discard(project)

    @precondition(lambda self: not self.broken)
    @rule(project=st.sampled_from(PROJECTS), entities=st.integers(0, 3))
    def push(self, project: str, entities: int) -> None:
        """A push; the server logs one change per entity and answers later."""
        carried = tuple(change_push(f"pushed-{i}") for i in range(entities))
        push_id = self.protocol.push(project, carried)
        assert push_id is not None
        [frame] = sent(self.protocol)
        assert isinstance(frame, Push)
        assert frame.push_id == push_id
        results = []
        for pushed in carried:
            self.head[project] += 1
            results.append(EntityAccepted(pushed.entity_id, (self.head[project],)))
        self.answers.append((PushResult(push_id, project, tuple(results)), carried))

    @precondition(lambda self: not self.broken and bool(self.answers))
    @rule()
    def answer(self) -> None:
        result = self.answers[0][0]
        acknowledged = max(self.protocol.acknowledged_seq(result.project_id), 0)
        self.deliver(result)
        for entity_result in result.results:
            assert isinstance(entity_result, EntityAccepted)
            acknowledged = max(acknowledged, *entity_result.seqs)
        assert self.protocol.acknowledged_seq(result.project_id) == acknowledged
        assert not self.protocol.pushing(result.project_id) or any(
            r.project_id == result.project_id for r, _ in self.answers
        )

    @precondition(lambda self: not self.broken)
    @rule(push_id=st.integers(1000, 2000))
    def answer_unknown_push(self, push_id: int) -> None:
        assert feed(self.protocol, PushResult(push_id, P, ())) == []

    @precondition(lambda self: not self.broken)
    @rule(project=st.sampled_from(PROJECTS), kind=st.integers(0, 4))
    def break_a_rule(self, project: str, kind: int) -> None:
        if not self.on_the_wire(project):
            return
        state = self.protocol.project_state(project)
        cursor = self.protocol.cursor(project)
        if state is ProjectState.SNAPSHOT:
            bad: list[ServerMessage] = [
                changes(1, 1, project),
                Synced(project, 0),
                SnapshotBegin(project, 0, 0),
            ]
        elif cursor is None:
            bad = [changes(1, 1, project), SnapshotEnd(project, 0), Synced(project, 0)]
        else:
            bad = [
                changes(cursor + 2, cursor + 2, project),
                SnapshotBegin(project, cursor, 0),
                SnapshotChunk(project, (entity("x"),)),
                Synced(project, cursor + 1),
            ]
            if cursor > 0:
                bad.append(changes(cursor, cursor, project))
        self.deliver(bad[kind % len(bad)], breaks=True)

    @rule()
    def reconnect(self) -> None:
        self.protocol.connection_closed()
        self.connect()

    @precondition(lambda self: not self.broken)
    @rule()
    def settle(self) -> None:
        """Send everything: every subscribed project ends live at the head of its log."""
        while self.answers:
            self.answer()
        for project in PROJECTS:
            while self.stray[project]:
                self.send_stray(project)
            stream = self.streams.get(project)
            while stream is not None and not (
                stream.live and stream.cursor == self.head[project] and not stream.queue
            ):
                self.send(project, 3)
            if stream is not None:
                assert self.stored[project] == self.head[project]
                assert project in self.protocol.live_projects()

    @invariant()
    def the_store_holds_a_gapless_prefix_of_each_log_with_its_conflicts(self) -> None:
        for project in PROJECTS:
            cursor = self.stored[project]
            assert self.held[project] == list(range(1, (cursor or 0) + 1))
            assert (cursor or 0) <= self.head[project]
            held_conflicts = {
                record.conflict_id
                for seq, record in self.conflict_at[project].items()
                if seq <= (cursor or 0)
            }
            assert held_conflicts <= self.conflicts[project]
            if not self.broken and self.protocol.project_state(project) in (
                ProjectState.CATCHING_UP,
                ProjectState.LIVE,
            ):
                assert self.protocol.cursor(project) == cursor


TestClientAgainstModelServer = ClientAgainstModelServer.TestCase
TestClientAgainstModelServer.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None
)
