"""The connection state machines, driven by frames alone: no sockets, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.codec import decode_client, decode_server, encode
from fieldsync.sync.connection import (
    ClientConnection,
    ConnectionState,
    InvalidStateError,
    ServerConnection,
)
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    PROTOCOL_VERSIONS,
    ChangeRecord,
    Changes,
    ClientMessage,
    EntityAccepted,
    EntityPush,
    Error,
    Hello,
    ProjectCursor,
    Push,
    PushResult,
    ServerMessage,
    Subscribe,
    Synced,
    Unsubscribe,
    Welcome,
)
from tests.sync.test_codec import client_messages, hostile_frames, server_messages

State = ConnectionState
HELLO = Hello((1,), "token", "client-1", (ProjectCursor("p1", None),))
WELCOME = Welcome(1, "user-1", "session-1", {"max_frame_bytes": DEFAULT_LIMITS.max_frame_bytes})
PUSH = Push(3, "p1", (EntityPush("activity", "a1", (b"change",)),))
GOING_AWAY = (State.CLOSING, State.CLOSED)


def state_of(connection: ServerConnection | ClientConnection) -> State:
    """The state, read afresh (mypy would keep an earlier ``assert`` narrowing it)."""
    return connection.state


def sent(connection: ServerConnection) -> list[ServerMessage]:
    return [decode_server(frame) for frame in connection.data_to_send()]


def sent_by(connection: ClientConnection) -> list[ClientMessage]:
    return [decode_client(frame) for frame in connection.data_to_send()]


def only_error(connection: ServerConnection) -> Error:
    (message,) = sent(connection)
    assert isinstance(message, Error)
    return message


def server(
    state: State = State.AWAITING_HELLO, max_consecutive_errors: int = 20
) -> ServerConnection:
    connection = ServerConnection(max_consecutive_errors=max_consecutive_errors)
    if state is not State.AWAITING_HELLO:
        connection.receive_frame(encode(HELLO))
        assert connection.events_received() == [HELLO]
    if state is State.OPEN:
        connection.accept(WELCOME)
        assert sent(connection) == [WELCOME]
    assert connection.state is state
    return connection


# --- the server: the handshake ---------------------------------------------------------------


def test_a_message_before_hello_is_fatal() -> None:
    connection = server()
    connection.receive_frame(encode(PUSH))
    error = only_error(connection)
    assert (error.code, error.fatal) == (ErrorCode.HANDSHAKE_REQUIRED, True)
    assert "push" in error.message
    assert connection.state is State.CLOSING
    assert connection.close_requested == (CloseCode.POLICY_VIOLATION, "handshake_required")
    assert connection.events_received() == []


def test_a_broken_first_frame_is_fatal_with_its_own_code() -> None:
    connection = server()
    connection.receive_frame(encode(HELLO)[:-3])
    error = only_error(connection)
    assert (error.code, error.fatal) == (ErrorCode.MALFORMED_FRAME, True)
    connection = server()
    connection.receive_frame(encode(Hello((1,), "x" * 9000, "c")))
    error = only_error(connection)
    assert (error.code, error.fatal) == (ErrorCode.INVALID_MESSAGE, True)
    assert error.message.startswith("hello.token:")
    assert connection.close_requested == (CloseCode.POLICY_VIOLATION, "invalid_message")


def test_an_unsupported_version_names_the_supported_ones() -> None:
    connection = server()
    connection.receive_frame(encode(Hello((7, 8), "token", "c")))
    error = only_error(connection)
    assert (error.code, error.fatal) == (ErrorCode.UNSUPPORTED_VERSION, True)
    assert "1" in error.message
    assert "7, 8" in error.message
    assert connection.close_requested == (CloseCode.UNSUPPORTED_VERSION, "unsupported_version")
    assert connection.events_received() == []


def test_the_highest_common_version_is_chosen() -> None:
    connection = server()
    connection.receive_frame(encode(Hello((0, *PROTOCOL_VERSIONS, 99), "token", "c")))
    assert connection.state is State.AUTHENTICATING
    assert connection.version == max(PROTOCOL_VERSIONS)
    with pytest.raises(ValueError, match="negotiated"):
        connection.accept(Welcome(99, "u", "s", {}))


def test_hello_then_accept_opens_the_connection() -> None:
    connection = server()
    connection.receive_frame(encode(HELLO))
    assert connection.state is State.AUTHENTICATING
    assert connection.events_received() == [HELLO]
    assert connection.data_to_send() == []
    connection.accept(WELCOME)
    assert state_of(connection) is State.OPEN
    assert sent(connection) == [WELCOME]
    assert connection.close_requested is None


def test_hello_then_refuse_closes_with_the_given_code() -> None:
    connection = server(State.AUTHENTICATING)
    connection.refuse(ErrorCode.INVALID_TOKEN, "signature mismatch", CloseCode.UNAUTHORIZED)
    assert only_error(connection) == Error("invalid_token", "signature mismatch", True)
    assert connection.state is State.CLOSING
    assert connection.close_requested == (CloseCode.UNAUTHORIZED, "invalid_token")
    # Verification that finishes after the connection went away is harmless.
    connection.accept(WELCOME)
    connection.refuse(ErrorCode.INVALID_TOKEN, "again", CloseCode.UNAUTHORIZED)
    assert connection.data_to_send() == []


@pytest.mark.parametrize("frame", [encode(Subscribe(ProjectCursor("p", 1))), b"\xc1", "text"])
def test_any_frame_while_authenticating_is_fatal(frame: bytes | str) -> None:
    connection = server(State.AUTHENTICATING)
    connection.receive_frame(frame)
    error = only_error(connection)
    assert (error.code, error.fatal) == (ErrorCode.HANDSHAKE_REQUIRED, True)
    assert "wait for welcome" in error.message
    assert connection.state is State.CLOSING
    assert connection.events_received() == []
    connection.accept(WELCOME)  # too late: nothing goes out
    assert connection.data_to_send() == []
    assert connection.state is State.CLOSING


# --- the server: an open connection ------------------------------------------------------------


def test_client_messages_become_events() -> None:
    connection = server(State.OPEN)
    messages: list[ClientMessage] = [Subscribe(ProjectCursor("p2", 4)), PUSH, Unsubscribe("p2")]
    for message in messages:
        connection.receive_frame(encode(message))
    assert connection.events_received() == messages
    assert connection.events_received() == []
    assert connection.data_to_send() == []


def test_a_second_hello_is_refused_without_closing() -> None:
    connection = server(State.OPEN)
    connection.receive_frame(encode(HELLO))
    assert only_error(connection) == Error(
        "already_handshaken", "this connection is open already", False
    )
    assert connection.state is State.OPEN
    assert connection.events_received() == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1", ErrorCode.MALFORMED_FRAME),
        ("text", ErrorCode.MALFORMED_FRAME),
        (b"\x81\xa1t\xa8teleport", ErrorCode.UNKNOWN_MESSAGE_TYPE),
        (encode(Unsubscribe("p" * 65)), ErrorCode.INVALID_MESSAGE),
        (b"\x80" * (DEFAULT_LIMITS.max_frame_bytes + 1), ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_bad_frames_get_non_fatal_errors_and_the_connection_stays_usable(
    frame: bytes | str, code: ErrorCode
) -> None:
    connection = server(State.OPEN)
    connection.receive_frame(frame)
    error = only_error(connection)
    assert (error.code, error.fatal) == (code, False)
    assert connection.state is State.OPEN
    assert connection.close_requested is None
    connection.receive_frame(encode(PUSH))
    assert connection.events_received() == [PUSH]


def test_too_many_entities_is_answered_with_the_push_id() -> None:
    connection = server(State.OPEN)
    limit = DEFAULT_LIMITS.max_entities_per_batch
    connection.receive_frame(encode(Push(77, "p", (PUSH.entities[0],) * (limit + 1))))
    error = only_error(connection)
    assert (error.code, error.fatal, error.push_id) == (ErrorCode.TOO_MANY_ENTITIES, False, 77)


def test_too_many_bad_frames_in_a_row_close_the_connection() -> None:
    connection = server(State.OPEN, max_consecutive_errors=5)
    for _ in range(4):
        connection.receive_frame(b"\xc1")
    connection.receive_frame(encode(PUSH))  # a valid message starts the count again
    for _ in range(4):
        connection.receive_frame(encode(HELLO))  # a second hello counts as a bad frame too
    errors = sent(connection)
    assert len(errors) == 8
    assert not any(isinstance(e, Error) and e.fatal for e in errors)
    assert connection.state is State.OPEN
    connection.receive_frame(b"\xc1")
    error = only_error(connection)
    assert (error.code, error.fatal) == (ErrorCode.MALFORMED_FRAME, True)
    assert "5 bad frames in a row" in error.message
    assert connection.close_requested == (CloseCode.POLICY_VIOLATION, "malformed_frame")
    connection.receive_frame(encode(PUSH))  # ignored from now on
    assert connection.events_received() == [PUSH]  # only the one before
    assert connection.data_to_send() == []


def test_the_default_limit_of_bad_frames_is_twenty() -> None:
    connection = server(State.OPEN)
    for _ in range(19):
        connection.receive_frame(b"\xc1")
    assert connection.state is State.OPEN
    connection.receive_frame(b"\xc1")
    assert state_of(connection) is State.CLOSING


def test_fail_sends_a_fatal_error_and_requests_the_close() -> None:
    connection = server(State.OPEN)
    connection.send(Synced("p1", 3))
    connection.fail(ErrorCode.TOO_SLOW, "resume from your cursor", CloseCode.TOO_SLOW)
    assert sent(connection) == [
        Synced("p1", 3),
        Error("too_slow", "resume from your cursor", True),
    ]
    assert connection.close_requested == (CloseCode.TOO_SLOW, "too_slow")
    connection.fail(ErrorCode.INTERNAL_ERROR, "again", CloseCode.INTERNAL_ERROR)  # no-op
    connection.send(Changes("p1", (ChangeRecord(4, "plan", "x", b"c"),)))  # dropped
    connection.receive_frame(encode(PUSH))  # ignored
    assert connection.data_to_send() == []
    assert connection.events_received() == []
    assert connection.close_requested == (CloseCode.TOO_SLOW, "too_slow")


def test_connection_closed_discards_what_was_not_sent() -> None:
    connection = server(State.OPEN)
    connection.send(Synced("p1", 3))
    connection.connection_closed()
    assert connection.state is State.CLOSED
    assert connection.data_to_send() == []
    connection.receive_frame(encode(PUSH))
    assert connection.events_received() == []


def test_close_without_an_error() -> None:
    connection = server(State.OPEN)
    connection.close(CloseCode.GOING_AWAY, "shutting down")
    assert connection.state is State.CLOSING
    assert connection.close_requested == (CloseCode.GOING_AWAY, "shutting down")
    assert connection.data_to_send() == []


def test_close_reasons_fit_a_websocket_close_frame() -> None:
    connection = server(State.OPEN)
    connection.close(CloseCode.NORMAL, "é" * 100)
    assert connection.close_requested is not None
    assert len(connection.close_requested[1].encode()) <= 123


# --- the server: local misuse raises ------------------------------------------------------------


@pytest.mark.parametrize("state", [State.AWAITING_HELLO, State.AUTHENTICATING])
def test_only_errors_can_be_sent_before_the_connection_is_open(state: State) -> None:
    connection = server(state)
    with pytest.raises(InvalidStateError):
        connection.send(Synced("p1", 1))
    connection.send(Error("server_unavailable", "try later"))
    assert sent(connection) == [Error("server_unavailable", "try later")]
    assert connection.state is state


def test_welcome_and_fatal_errors_have_their_own_methods() -> None:
    connection = server(State.OPEN)
    with pytest.raises(ValueError, match="accept"):
        connection.send(WELCOME)
    with pytest.raises(ValueError, match="fail"):
        connection.send(Error("too_slow", "bye", fatal=True))
    assert connection.data_to_send() == []


@pytest.mark.parametrize("state", [State.AWAITING_HELLO, State.OPEN])
def test_accept_and_refuse_need_a_hello_being_verified(state: State) -> None:
    connection = server(state)
    with pytest.raises(InvalidStateError):
        connection.accept(WELCOME)
    with pytest.raises(InvalidStateError):
        connection.refuse(ErrorCode.INVALID_TOKEN, "no", CloseCode.UNAUTHORIZED)
    assert connection.state is state


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([State.AWAITING_HELLO, State.AUTHENTICATING, State.OPEN]),
    st.lists(hostile_frames, max_size=5),
)
def test_no_frame_makes_the_server_raise(state: State, frames: list[bytes | str]) -> None:
    connection = server(state)
    for frame in frames:
        connection.receive_frame(frame)
    for message in sent(connection):
        assert isinstance(message, Error)


# --- the client ---------------------------------------------------------------------------------


def client(state: State = State.AWAITING_HELLO) -> ClientConnection:
    connection = ClientConnection()
    if state is not State.AWAITING_HELLO:
        connection.hello("token", "client-1", [ProjectCursor("p1", None)])
        assert sent_by(connection) == [HELLO]
    if state is State.OPEN:
        connection.receive_frame(encode(WELCOME))
        assert connection.events_received() == [WELCOME]
    assert connection.state is state
    return connection


def test_the_client_says_hello_and_is_welcomed() -> None:
    connection = ClientConnection()
    with pytest.raises(InvalidStateError):
        connection.send(PUSH)
    connection.hello("token", "client-1", [ProjectCursor("p1", None)], outbox_age_ms=12)
    assert sent_by(connection) == [Hello(PROTOCOL_VERSIONS, "token", "client-1",
                                         (ProjectCursor("p1", None),), 12)]  # fmt: skip
    assert connection.state is State.AUTHENTICATING
    with pytest.raises(InvalidStateError):
        connection.hello("token", "client-1")
    with pytest.raises(InvalidStateError):
        connection.send(PUSH)
    connection.receive_frame(encode(WELCOME))
    assert state_of(connection) is State.OPEN
    assert connection.events_received() == [WELCOME]
    assert (connection.welcome, connection.version) == (WELCOME, 1)
    connection.send(PUSH)
    assert sent_by(connection) == [PUSH]
    with pytest.raises(ValueError, match="hello"):
        connection.send(HELLO)


def test_server_messages_become_client_events() -> None:
    connection = client(State.OPEN)
    messages: list[ServerMessage] = [
        Changes("p1", (ChangeRecord(1, "plan", "x", b"c"),)),
        Synced("p1", 1),
        PushResult(3, "p1", (EntityAccepted("a1", (2,)),)),
        Error("forbidden", "read only", False, 4),
    ]
    for message in messages:
        connection.receive_frame(encode(message))
    assert connection.events_received() == messages
    assert connection.state is State.OPEN


@pytest.mark.parametrize("state", [State.AUTHENTICATING, State.OPEN])
def test_a_fatal_error_is_an_event_and_closes(state: State) -> None:
    connection = client(state)
    error = Error("invalid_token", "expired", True)
    connection.receive_frame(encode(error))
    assert connection.events_received() == [error]
    assert connection.state is State.CLOSING
    assert connection.close_requested == (CloseCode.NORMAL, "invalid_token")
    assert connection.failure is None
    connection.receive_frame(encode(Synced("p1", 1)))
    assert connection.events_received() == []
    connection.send(PUSH)  # dropped: the connection is going away
    assert connection.data_to_send() == []


@pytest.mark.parametrize(
    ("state", "frame", "code"),
    [
        (State.OPEN, b"\xc1", ErrorCode.MALFORMED_FRAME),
        (State.OPEN, "text", ErrorCode.MALFORMED_FRAME),
        (State.OPEN, encode(HELLO), ErrorCode.UNKNOWN_MESSAGE_TYPE),
        (State.OPEN, encode(WELCOME), ErrorCode.ALREADY_HANDSHAKEN),
        (State.AUTHENTICATING, encode(Synced("p1", 1)), ErrorCode.HANDSHAKE_REQUIRED),
        (State.AUTHENTICATING, encode(Welcome(2, "u", "s", {})), ErrorCode.UNSUPPORTED_VERSION),
        (State.AWAITING_HELLO, encode(WELCOME), ErrorCode.HANDSHAKE_REQUIRED),
    ],
)
def test_a_server_that_breaks_the_protocol_is_a_failure_not_an_exception(
    state: State, frame: bytes | str, code: ErrorCode
) -> None:
    connection = client(state)
    connection.receive_frame(frame)
    assert connection.events_received() == []
    assert connection.failure is not None
    assert connection.failure.code is code
    assert connection.state is State.CLOSING
    assert connection.close_requested == (CloseCode.PROTOCOL_ERROR, code.value)


def test_an_oversized_server_frame_closes_with_message_too_big() -> None:
    connection = ClientConnection(Limits(max_frame_bytes=10, max_document_bytes=10))
    connection.hello("token", "c")
    connection.receive_frame(b"\x80" * 21)
    assert connection.close_requested == (CloseCode.MESSAGE_TOO_BIG, "frame_too_large")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([State.AWAITING_HELLO, State.AUTHENTICATING, State.OPEN]),
    st.lists(hostile_frames | server_messages.map(encode), max_size=5),
)
def test_no_frame_makes_the_client_raise(state: State, frames: list[bytes | str]) -> None:
    connection = client(state)
    for frame in frames:
        connection.receive_frame(frame)


def test_a_client_and_a_server_talk() -> None:
    ours, theirs = ClientConnection(), ServerConnection()

    def pump() -> None:
        for frame in ours.data_to_send():
            theirs.receive_frame(frame)
        for frame in theirs.data_to_send():
            ours.receive_frame(frame)

    ours.hello("token", "client-1", [ProjectCursor("p1", None)])
    pump()
    (hello,) = theirs.events_received()
    assert isinstance(hello, Hello)
    theirs.accept(Welcome(theirs.version or 0, "user-1", "session-1", {}))
    pump()
    assert ours.state is theirs.state is State.OPEN
    ours.send(PUSH)
    pump()
    assert theirs.events_received() == [PUSH]
    theirs.send(PushResult(3, "p1", (EntityAccepted("a1", (1,)),)))
    theirs.send(Changes("p1", (ChangeRecord(1, "activity", "a1", b"change"),)))
    pump()
    assert [type(e) for e in ours.events_received()] == [Welcome, PushResult, Changes]


# --- the server under random sequences of everything ------------------------------------------

ALLOWED = {
    (State.AWAITING_HELLO, State.AUTHENTICATING),
    (State.AWAITING_HELLO, State.CLOSING),
    (State.AUTHENTICATING, State.OPEN),
    (State.AUTHENTICATING, State.CLOSING),
    (State.OPEN, State.CLOSING),
    (State.CLOSING, State.CLOSED),
    (State.AWAITING_HELLO, State.CLOSED),
    (State.AUTHENTICATING, State.CLOSED),
    (State.OPEN, State.CLOSED),
}
codes = st.sampled_from(list(ErrorCode))
close_codes = st.sampled_from(list(CloseCode))


class ServerMachine(RuleBasedStateMachine):
    """A shell that drains after every step, doing anything in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.connection = ServerConnection(Limits(max_frame_bytes=2048), max_consecutive_errors=3)
        self.state = self.connection.state
        self.frames: list[bytes] = []
        self.frames_when_close_requested: int | None = None
        self.closed_by_error = False

    @initialize(start=st.sampled_from([State.AWAITING_HELLO, State.AUTHENTICATING, State.OPEN]))
    def start_in(self, start: State) -> None:
        """Most random frames end a handshake, so many runs start later to explore OPEN."""
        if start is not State.AWAITING_HELLO:
            self.good_hello()
            self.drains_and_checks()
        if start is State.OPEN:
            self.accept()
            self.drains_and_checks()

    @property
    def going_away(self) -> bool:
        return self.connection.state in GOING_AWAY

    @rule()
    def good_hello(self) -> None:
        self.connection.receive_frame(encode(HELLO))

    @rule(message=client_messages)
    def valid_frame(self, message: ClientMessage) -> None:
        self.connection.receive_frame(encode(message))

    @rule(frame=hostile_frames)
    def hostile_frame(self, frame: bytes | str) -> None:
        self.connection.receive_frame(frame)

    @rule()
    def accept(self) -> None:
        if self.connection.state is State.AUTHENTICATING or self.going_away:
            self.connection.accept(Welcome(self.connection.version or 0, "u", "s", {}))
        else:
            with pytest.raises(InvalidStateError):
                self.connection.accept(WELCOME)

    @rule(code=codes, close_code=close_codes)
    def refuse(self, code: ErrorCode, close_code: CloseCode) -> None:
        if self.connection.state is State.AUTHENTICATING or self.going_away:
            self.connection.refuse(code, "refused", close_code)
        else:
            with pytest.raises(InvalidStateError):
                self.connection.refuse(code, "refused", close_code)

    @rule(code=codes, close_code=close_codes)
    def fail(self, code: ErrorCode, close_code: CloseCode) -> None:
        self.connection.fail(code, "failed", close_code)

    @rule(message=server_messages)
    def send(self, message: ServerMessage) -> None:
        if self.going_away:
            self.connection.send(message)
        elif isinstance(message, Welcome) or (isinstance(message, Error) and message.fatal):
            with pytest.raises(ValueError):  # noqa: PT011 (either message is fine)
                self.connection.send(message)
        elif isinstance(message, Error) or self.connection.state is State.OPEN:
            self.connection.send(message)
        else:
            with pytest.raises(InvalidStateError):
                self.connection.send(message)

    @rule()
    def close(self) -> None:
        self.connection.close()

    @rule()
    def transport_closed(self) -> None:
        self.connection.connection_closed()

    @invariant()
    def drains_and_checks(self) -> None:
        previous, self.state = self.state, self.connection.state
        assert previous is self.state or (previous, self.state) in ALLOWED
        event(f"{previous.name} -> {self.state.name}")
        events = self.connection.events_received()
        if self.state is not State.OPEN and previous is not State.OPEN:
            assert all(isinstance(e, Hello) for e in events)
        new = [decode_server(frame) for frame in self.connection.data_to_send()]
        fatal = [i for i, m in enumerate(new) if isinstance(m, Error) and m.fatal]
        if self.frames_when_close_requested is not None:
            assert new == []
        elif self.connection.close_requested is not None:
            self.frames_when_close_requested = len(self.frames) + len(new)
            # A close that came with an error ends with that error, and only there.
            assert fatal in ([], [len(new) - 1])
        else:
            assert fatal == []
        self.frames.extend(encode(m) for m in new)
        assert (self.connection.close_requested is not None) == (self.state in GOING_AWAY) or (
            self.state is State.CLOSED
        )


ServerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, suppress_health_check=[HealthCheck.too_slow]
)
test_server_state_machine = ServerMachine.TestCase
