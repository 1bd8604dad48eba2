"""The server's own framing of binary messages is websockets' framing, byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from fieldsync.live.ws_frames import binary_message

SIZES = st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]) | st.integers(0, 3000)


@given(SIZES, st.binary(max_size=16))
def test_a_binary_message_is_framed_as_websockets_frames_it(size: int, seed: bytes) -> None:
    payload = (seed or b"x") * (size // max(1, len(seed or b"x")) + 1)
    payload = payload[:size]
    assert binary_message(payload) == Frame(Opcode.BINARY, payload).serialize(mask=False)
