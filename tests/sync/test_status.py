"""The ``status`` message: round trip, optional fields, and refusal of bad values."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldsync.sync.codec import ProtocolViolation, decode_client, decode_server, encode
from fieldsync.sync.connection import ClientConnection, ConnectionState
from fieldsync.sync.messages import Status, Welcome

statuses = st.builds(Status, st.text(max_size=64), st.text(max_size=64), st.text(max_size=200))


@given(statuses)
def test_status_round_trips(status: Status) -> None:
    assert decode_server(encode(status)) == status


def test_code_and_message_may_be_left_out() -> None:
    frame = msgpack.packb({"t": "status", "state": "ok"})
    assert decode_server(frame) == Status("ok")


def test_bad_status_values_are_refused() -> None:
    for bad in ({"t": "status"}, {"t": "status", "state": 1}, {"t": "status", "state": "x" * 65}):
        with pytest.raises(ProtocolViolation):
            decode_server(msgpack.packb(bad))
    with pytest.raises(ProtocolViolation):
        decode_client(encode(Status("ok")))  # a server message only


def test_a_client_connection_hands_status_to_the_app_once_open() -> None:
    client = ClientConnection()
    client.hello("token", "device")
    client.receive_frame(encode(Welcome(1, "u", "s", {})))
    client.receive_frame(encode(Status("degraded", "database_unavailable", "down")))
    assert client.events_received()[-1] == Status("degraded", "database_unavailable", "down")
    assert client.state is ConnectionState.OPEN
