"""The server's reading of client frames (``live.ws_reader``) against websockets' own server
protocol, which read them before: client frames as websockets' client frames them, cut at
any byte boundary, read to the same messages, pings, pongs and close; broken ones close
with the code websockets would close with."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from fieldsync.live.ws_reader import (
    CloseReceived,
    Event,
    Failure,
    FrameReader,
    Message,
    Ping,
    Pong,
)

Outcome = tuple[object, ...]


@dataclass(frozen=True)
class Raw:
    """A client frame made by hand, to break the rules websockets' serializer enforces."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True

    def serialize(self) -> bytes:
        head1 = (0x80 if self.fin else 0) | self.rsv << 4 | self.opcode
        size = len(self.payload)
        mask_bit = 0x80 if self.masked else 0
        if size < 126:
            header = struct.pack("!BB", head1, mask_bit | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", head1, mask_bit | 126, size)
        else:
            header = struct.pack("!BBQ", head1, mask_bit | 127, size)
        if not self.masked:
            return header + self.payload
        key = os.urandom(4)
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(self.payload))
        return header + key + masked


Piece = Frame | Raw


def wire(pieces: list[Piece]) -> bytes:
    return b"".join(
        p.serialize(mask=True) if isinstance(p, Frame) else p.serialize() for p in pieces
    )


def websockets_reads(data: bytes, max_size: int | None) -> list[Outcome]:
    """What the server made of ``data`` when websockets read it: its frames put together
    into messages as the wire did (a text message that is not UTF-8 failed with 1007)."""
    protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
    protocol.receive_data(data)
    outcomes: list[Outcome] = []
    pieces: list[bytes] = []
    text = False
    for frame in protocol.events_received():
        assert isinstance(frame, Frame)
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            text, pieces = frame.opcode is Opcode.TEXT, [bytes(frame.data)]
        elif frame.opcode is Opcode.CONT:
            pieces.append(bytes(frame.data))
        elif frame.opcode is Opcode.PING:
            outcomes.append(("ping", bytes(frame.data)))
            continue
        elif frame.opcode is Opcode.PONG:
            outcomes.append(("pong", bytes(frame.data)))
            continue
        else:
            close = Close.parse(bytes(frame.data))
            outcomes.append(("close", int(close.code), close.reason, bytes(frame.data)))
            return outcomes
        if not frame.fin:
            continue
        data = b"".join(pieces)
        if text:
            try:
                outcomes.append(("message", data.decode()))
            except UnicodeDecodeError:
                outcomes.append(("fail", 1007))
                return outcomes
        else:
            outcomes.append(("message", data))
    if protocol.parser_exc is not None:
        assert protocol.close_sent is not None
        outcomes.append(("fail", int(protocol.close_sent.code)))
    return outcomes


def outcome(event: Event) -> Outcome:
    if isinstance(event, Message):
        return ("message", event.data)
    if isinstance(event, Ping):
        return ("ping", event.payload)
    if isinstance(event, Pong):
        return ("pong", event.payload)
    if isinstance(event, CloseReceived):
        return ("close", 1005 if event.code is None else event.code, event.reason, event.payload)
    assert isinstance(event, Failure)
    return ("fail", event.code)


def we_read(data: bytes, cuts: list[int], max_size: int | None) -> list[Outcome]:
    reader = FrameReader(max_size)
    events: list[Event] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        events.extend(reader.receive(data[start:cut]))
        start = max(start, cut)
    if events and isinstance(events[-1], CloseReceived | Failure):
        assert reader.done
        assert reader.receive(b"\x81\x85 more bytes are discarded") == []
    return [outcome(e) for e in events]


# -- what a client sends --------------------------------------------------------------------

controls = st.builds(
    lambda opcode, payload: Frame(opcode, payload),
    st.sampled_from([Opcode.PING, Opcode.PONG]),
    st.binary(max_size=20) | st.binary(min_size=125, max_size=125),
)


@st.composite
def messages(draw: st.DrawFn) -> list[Piece]:
    """One data message, maybe fragmented, with pings and pongs between its fragments."""
    text = draw(st.booleans())
    data = draw(st.text(max_size=40)).encode() if text else draw(st.binary(max_size=150))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    first = Opcode.TEXT if text else Opcode.BINARY
    frames: list[Piece] = []
    for index, part in enumerate(parts):
        if index and draw(st.booleans()):
            frames.append(draw(controls))
        frames.append(Frame(first if index == 0 else Opcode.CONT, part, index == len(parts) - 1))
    return frames


good_closes = st.builds(
    lambda code, reason: Frame(Opcode.CLOSE, Close(code, reason).serialize()),
    st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014])
    | st.integers(3000, 4999),
    st.text(max_size=30).filter(lambda r: len(r.encode()) <= 123),
) | st.just(Frame(Opcode.CLOSE, b""))


@st.composite
def streams(draw: st.DrawFn) -> list[Piece]:
    pieces: list[Piece] = []
    for item in draw(st.lists(messages() | controls.map(lambda c: [c]), max_size=4)):
        pieces.extend(item)
    if draw(st.booleans()):
        pieces.append(draw(good_closes))
        pieces.extend(draw(messages()))  # after a close: discarded
    return pieces


always_broken = st.one_of(
    st.builds(lambda rsv: Raw(0x2, b"payload", rsv=rsv), st.integers(1, 7)),
    st.just(Raw(0x2, b"not masked", masked=False)),
    st.builds(lambda op: Raw(op, b"x"), st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15])),
    st.builds(
        lambda op, n: Raw(op, b"p" * n),
        st.sampled_from([0x8, 0x9, 0xA]),
        st.sampled_from([126, 127]) | st.integers(128, 300),
    ),
    st.builds(lambda op: Raw(op, b"ctl", fin=False), st.sampled_from([0x8, 0x9, 0xA])),
    st.just(Raw(0x8, b"\x03")),
    st.builds(
        lambda code: Raw(0x8, struct.pack("!H", code) + b"bye"),
        st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]),
    ),
    st.just(Raw(0x8, struct.pack("!H", 1000) + b"\xff\xfe")),
    st.just(Raw(0x1, b"\xc3\x28 not utf-8")),
)
"""Frames that break a rule wherever they come (unless after the client's close)."""
broken_in_place = st.one_of(
    st.just(Raw(0x0, b"a continuation, stray outside a fragmented message")),
    st.just(Raw(0x2, b"a new message, wrong inside a fragmented one")),
    st.just(Raw(0x2, b"opens a message the next data frame breaks", fin=False)),
    st.builds(lambda n: Raw(0x2, b"b" * n), st.integers(65, 300)),  # over a small limit
    st.just(Raw(0x8, struct.pack("!H", 1000) + b"bye")),  # a close, wrong inside a message
)
SIZES = st.sampled_from([None, 64, 200, 1 << 20])


@settings(max_examples=150)
@given(streams(), st.lists(st.integers(0, 1 << 16), max_size=12), SIZES)
def test_client_frames_cut_anywhere_read_as_websockets_reads_them(
    pieces: list[Piece], cuts: list[int], max_size: int | None
) -> None:
    data = wire(pieces)
    assert we_read(data, cuts, max_size) == websockets_reads(data, max_size)


@settings(max_examples=150)
@given(
    streams(),
    always_broken | broken_in_place,
    st.integers(0, 40),
    st.lists(st.integers(0, 1 << 16), max_size=8),
    SIZES,
)
def test_a_broken_frame_anywhere_closes_with_the_code_websockets_closes_with(
    pieces: list[Piece], bad: Raw, where: int, cuts: list[int], max_size: int | None
) -> None:
    pieces.insert(where % (len(pieces) + 1), bad)
    data = wire(pieces)
    assert we_read(data, cuts, max_size) == websockets_reads(data, max_size)


@settings(max_examples=100)
@given(
    st.binary(min_size=2, max_size=50),
    st.integers(1, 3),
    broken_in_place | good_closes | controls,
    st.integers(1, 3),
    st.lists(st.integers(0, 1 << 16), max_size=4),
)
def test_what_comes_inside_a_fragmented_message_is_judged_as_websockets_judges_it(
    data: bytes, fragments: int, inside: Piece, where: int, cuts: list[int]
) -> None:
    """Only pings and pongs may come between a message's fragments; a close or another data
    frame there is a protocol error."""
    step = max(1, len(data) // (fragments + 1))
    parts = [data[i : i + step] for i in range(0, len(data), step)]
    pieces: list[Piece] = [
        Frame(Opcode.BINARY if i == 0 else Opcode.CONT, part, i == len(parts) - 1)
        for i, part in enumerate(parts)
    ]
    pieces.insert(min(where, len(pieces) - 1), inside)
    encoded = wire(pieces)
    assert we_read(encoded, cuts, None) == websockets_reads(encoded, None)


@settings(max_examples=200)
@given(messages(), always_broken, st.lists(st.integers(0, 1 << 16), max_size=8))
def test_a_frame_that_breaks_a_rule_ends_the_reading_with_a_failure(
    before: list[Piece], bad: Raw, cuts: list[int]
) -> None:
    data = wire([*before, bad, Frame(Opcode.BINARY, b"never read")])
    ours = we_read(data, cuts, None)
    assert ours[-1][0] == "fail"
    assert ours == websockets_reads(data, None)


@settings(max_examples=150)
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6), SIZES)
def test_any_bytes_read_as_websockets_reads_them_or_fail_sooner(
    data: bytes, cuts: list[int], max_size: int | None
) -> None:
    """Where a header breaks a rule websockets checks only once the payload is in, the
    reader fails at the header: the same code, with less read."""
    ours, theirs = we_read(data, cuts, max_size), websockets_reads(data, max_size)
    if ours != theirs:
        assert ours[:-1] == theirs
        assert ours[-1] == ("fail", 1002)  # where websockets still waits for the payload


def test_a_message_over_the_limit_fails_at_the_header_that_takes_it_over() -> None:
    reader = FrameReader(100)
    first = Frame(Opcode.BINARY, b"a" * 60, fin=False).serialize(mask=True)
    assert reader.receive(first) == []
    header = Frame(Opcode.CONT, b"b" * 50).serialize(mask=True)[:6]  # no payload yet
    [failure] = reader.receive(header)
    assert failure == Failure(
        1009, "frame with 50 bytes after reading 60 bytes exceeds limit of 100 bytes"
    )
    assert reader.done


def test_a_large_frame_in_small_pieces_is_kept_in_one_growing_buffer() -> None:
    payload = os.urandom(200_000)
    data = Frame(Opcode.BINARY, payload).serialize(mask=True)
    reader = FrameReader(None)
    events: list[Event] = []
    for start in range(0, len(data), 1000):
        events.extend(reader.receive(data[start : start + 1000]))
    assert events == [Message(payload)]
