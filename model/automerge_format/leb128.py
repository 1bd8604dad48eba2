"""LEB128 integers as Automerge encodes them: at most 64 bits, and never overlong.

Decoding is as strict as the Rust library, so a length that parses here has exactly one
encoding, and the hash of the bytes as received equals the hash Automerge computes.
"""

__all__ = ["LEB128Error", "decode_sleb128", "decode_uleb128", "encode_uleb128"]

_MAX_BYTES = 10  # ceil(64 / 7)


class LEB128Error(ValueError):
    """Truncated, overlong or wider than 64 bits."""


def encode_uleb128(value: int) -> bytes:
    """The shortest unsigned LEB128 encoding of `value` (0 <= value < 2**64)."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{value} is outside the unsigned 64-bit range")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uleb128(buf: bytes, pos: int) -> tuple[int, int]:
    """Return (value, position after it) for the unsigned LEB128 starting at `pos`."""
    start = pos
    end = min(len(buf), pos + _MAX_BYTES)
    result = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and shift:
                raise LEB128Error(f"overlong LEB128 at offset {start}")
            if result >> 64:
                raise LEB128Error(f"LEB128 at offset {start} exceeds 64 bits")
            return result, pos
        shift += 7
    if pos - start >= _MAX_BYTES:
        raise LEB128Error(f"LEB128 at offset {start} exceeds 64 bits")
    raise LEB128Error(f"truncated LEB128 at offset {start}")


def decode_sleb128(buf: bytes, pos: int) -> tuple[int, int]:
    """Return (value, position after it) for the signed LEB128 starting at `pos`."""
    start = pos
    end = min(len(buf), pos + _MAX_BYTES)
    result = 0
    shift = 0
    prev = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            # A last byte that only repeats the previous byte's sign bit is redundant.
            redundant = (byte == 0 and not prev & 0x40) or (byte == 0x7F and prev & 0x40)
            if shift > 7 and redundant:
                raise LEB128Error(f"overlong signed LEB128 at offset {start}")
            if byte & 0x40:
                result -= 1 << shift
            if not -(1 << 63) <= result < 1 << 63:
                raise LEB128Error(f"signed LEB128 at offset {start} exceeds 64 bits")
            return result, pos
        prev = byte
    if pos - start >= _MAX_BYTES:
        raise LEB128Error(f"signed LEB128 at offset {start} exceeds 64 bits")
    raise LEB128Error(f"truncated signed LEB128 at offset {start}")
