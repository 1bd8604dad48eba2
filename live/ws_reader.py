"""Client frames of the sync WebSocket, read as a server must read them (RFC 6455).

Sans-I/O: bytes go in as the socket gives them (:meth:`FrameReader.receive`), whole
messages, pings, pongs, the client's close or the reason the connection must fail come out.
An idle socket keeps only a few slots here, no generator and no last frame: the reader is
plain state (the bytes of an unfinished frame, the pieces of an unfinished message).

The rules, and the close code each broken one earns, are websockets' (the server's framing
before this module): a client frame must be masked (1002), its reserved bits zero since no
extension is negotiated (1002), its opcode known (1002); a control frame is at most 125
bytes and not fragmented (1002); continuations follow a fragmented message and nothing else
interrupts one (1002, a close included); a message over ``max_size`` fails as soon as the
frame header that would take it over arrives (1009); a close payload is empty or a valid
code with a UTF-8 reason (1002, 1007); a text message is UTF-8 (1007). A header that breaks
a rule fails the connection before its payload is read, where websockets read the payload
first: the close code is the same, and a bad frame's payload is never buffered.
"""

from __future__ import annotations

from dataclasses import dataclass

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C helper is part of websockets' wheels
    from websockets.utils import apply_mask

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009

_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG))
_VALID_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)
"""Codes a peer may send (RFC 6455 section 7.4.1 and the IANA registry); 3000-4999 too."""


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message: ``str`` if it came as text, ``bytes`` if binary."""

    data: bytes | str


@dataclass(frozen=True, slots=True)
class Ping:
    """The client's ping: answer with a pong carrying ``payload``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The client's close. ``payload`` is its frame's payload as sent, which a server that
    has not closed yet echoes; ``code`` is None when the client gave none (1005)."""

    code: int | None
    reason: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Failure:
    """The client broke the protocol: close with ``code`` and ``reason``, read no more."""

    code: int
    reason: str


Event = Message | Ping | Pong | CloseReceived | Failure


class FrameReader:
    """Reads one connection's client frames. After a :class:`CloseReceived` or a
    :class:`Failure` it is :attr:`done` and discards whatever else comes."""

    __slots__ = ("_buffer", "_fragment_size", "_fragment_text", "_fragments", "_max_size", "done")

    def __init__(self, max_size: int | None) -> None:
        self._max_size = max_size
        self._buffer: bytes | bytearray = b""  # the start of a frame not whole yet
        self._fragments: list[bytes] | None = None  # a fragmented message, while one is open
        self._fragment_size = 0
        self._fragment_text = False
        self.done = False

    @property
    def held(self) -> int:
        """Bytes held of a message not yet whole (a frame's start, earlier fragments)."""
        return len(self._buffer) + self._fragment_size

    def receive(self, data: bytes) -> list[Event]:
        """The events ``data`` completes, in order; the last one ends the reading if it is a
        :class:`CloseReceived` or a :class:`Failure`."""
        if self.done:
            return []
        buffer = self._buffer
        if buffer:
            buffer += data  # a bytearray: an unfinished large frame grows in place
        else:
            buffer = data
        events: list[Event] = []
        offset, size = 0, len(buffer)
        while size - offset >= 2:
            head1, head2 = buffer[offset], buffer[offset + 1]
            opcode = head1 & 0x0F
            if opcode not in _OPCODES:
                events.append(Failure(PROTOCOL_ERROR, "invalid opcode"))
                break
            if not head2 & 0x80:
                events.append(Failure(PROTOCOL_ERROR, "incorrect masking"))
                break
            start = offset + 2
            length = head2 & 0x7F
            if length == 126:
                if size < start + 2:
                    break
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size < start + 8:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            failure = self._check_header(head1, opcode, length)
            if failure is not None:
                events.append(failure)
                break
            end = start + 4 + length
            if size < end:
                break
            payload = apply_mask(buffer[start + 4 : end], buffer[start : start + 4])
            offset = end
            event = self._frame(opcode, head1 & 0x80 != 0, payload)
            if event is not None:
                events.append(event)
                if isinstance(event, CloseReceived | Failure):
                    break
        if events and isinstance(events[-1], CloseReceived | Failure):
            self._end()
        elif offset == 0:
            self._buffer = buffer if isinstance(buffer, bytearray) else bytearray(buffer)
        else:
            self._buffer = bytearray(buffer[offset:]) if offset < size else b""
        return events

    def _end(self) -> None:
        self.done = True
        self._buffer = b""
        self._fragments = None

    def _check_header(self, head1: int, opcode: int, length: int) -> Failure | None:
        """The rule a whole frame header breaks, in the order websockets checks them (after
        the opcode and the mask bit, checked as soon as the first two bytes are in)."""
        if self._max_size is not None:
            limit = self._max_size - self._fragment_size
            if length > limit:
                return Failure(MESSAGE_TOO_BIG, _too_big(length, limit, self._fragments_size()))
        if head1 & 0x70:
            return Failure(PROTOCOL_ERROR, "reserved bits must be 0")
        if opcode >= _CLOSE:
            if length > 125:
                return Failure(PROTOCOL_ERROR, "control frame too long")
            if not head1 & 0x80:
                return Failure(PROTOCOL_ERROR, "fragmented control frame")
        elif opcode == _CONT:
            if self._fragments is None:
                return Failure(PROTOCOL_ERROR, "unexpected continuation frame")
        elif self._fragments is not None:
            return Failure(PROTOCOL_ERROR, "expected a continuation frame")
        return None

    def _fragments_size(self) -> int | None:
        return None if self._fragments is None else self._fragment_size

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> Event | None:
        if opcode in (_BINARY, _TEXT):
            if fin:
                return _message(payload, opcode == _TEXT)
            self._fragments = [payload]
            self._fragment_size = len(payload)
            self._fragment_text = opcode == _TEXT
            return None
        if opcode == _CONT:
            assert self._fragments is not None  # checked with the header
            self._fragments.append(payload)
            if not fin:
                self._fragment_size += len(payload)
                return None
            data, text = b"".join(self._fragments), self._fragment_text
            self._fragments, self._fragment_size = None, 0
            return _message(data, text)
        if opcode == _PING:
            return Ping(payload)
        if opcode == _PONG:
            return Pong(payload)
        return self._close(payload)

    def _close(self, payload: bytes) -> CloseReceived | Failure:
        code: int | None = None
        reason = ""
        if len(payload) == 1:
            return Failure(PROTOCOL_ERROR, "close frame too short")
        if payload:
            code = int.from_bytes(payload[:2], "big")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError as exc:
                return Failure(INVALID_DATA, f"{exc.reason} at position {exc.start}")
            if code not in _VALID_CLOSE_CODES and not 3000 <= code < 5000:
                return Failure(PROTOCOL_ERROR, "invalid status code")
        if self._fragments is not None:
            return Failure(PROTOCOL_ERROR, "incomplete fragmented message")
        return CloseReceived(code, reason, payload)


def _message(data: bytes, text: bool) -> Message | Failure:
    if not text:
        return Message(data)
    try:
        return Message(data.decode())
    except UnicodeDecodeError:
        return Failure(INVALID_DATA, "a text frame that is not UTF-8")


def _too_big(length: int, limit: int, read: int | None) -> str:
    """websockets' words for a message over the limit."""
    if read is None:
        return f"frame with {length} bytes exceeds limit of {limit} bytes"
    total = limit + read
    return f"frame with {length} bytes after reading {read} bytes exceeds limit of {total} bytes"
