"""The server's own framing is websockets' framing, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode

from fieldsync.live.ws_frames import binary_message, close_frame, ping_frame, pong_frame

SIZES = st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]) | st.integers(0, 3000)


@given(SIZES, st.binary(max_size=16))
def test_a_binary_message_is_framed_as_websockets_frames_it(size: int, seed: bytes) -> None:
    payload = (seed or b"x") * (size // max(1, len(seed or b"x")) + 1)
    payload = payload[:size]
    assert binary_message(payload) == Frame(Opcode.BINARY, payload).serialize(mask=False)


@given(st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=125))
def test_pings_and_pongs_are_framed_as_websockets_frames_them(opcode: Opcode, data: bytes) -> None:
    made = ping_frame(data) if opcode is Opcode.PING else pong_frame(data)
    assert made == Frame(opcode, data).serialize(mask=False)


@given(
    st.sampled_from([1000, 1001, 1008, 1009, 1011, 1012]) | st.integers(3000, 4999),
    st.text(max_size=200),
)
def test_a_close_is_framed_as_websockets_frames_it_its_reason_cut_to_fit(
    code: int, reason: str
) -> None:
    made = close_frame(code, reason)
    sent = Close.parse(made[2:])
    assert sent.code == code
    assert reason.startswith(sent.reason)
    assert len(made) <= 127
    assert made == Frame(Opcode.CLOSE, Close(code, sent.reason).serialize()).serialize(mask=False)
    if len(reason.encode()) <= 123:
        assert sent.reason == reason


def test_a_control_frame_over_125_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="125"):
        ping_frame(b"x" * 126)
