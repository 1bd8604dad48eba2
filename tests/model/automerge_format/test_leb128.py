"""LEB128 as Automerge reads it: one encoding per value, 64 bits at most."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldsync.model.automerge_format.leb128 import (
    LEB128Error,
    decode_sleb128,
    decode_uleb128,
    encode_uleb128,
)


@given(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=4))
def test_unsigned_round_trip_at_any_offset(value: int, prefix: bytes) -> None:
    encoded = encode_uleb128(value)
    assert decode_uleb128(prefix + encoded + b"\xff", len(prefix)) == (
        value,
        len(prefix) + len(encoded),
    )


@pytest.mark.parametrize(
    ("data", "value"),
    [(b"\x00", 0), (b"\x7f", -1), (b"\x3f", 63), (b"\x40", -64), (b"\xc0\xbb\x78", -123456)],
)
def test_signed_known_values(data: bytes, value: int) -> None:
    assert decode_sleb128(data, 0) == (value, len(data))


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing to read
        b"\x80",  # truncated
        b"\x80\x00",  # overlong zero
        b"\xff\x00",  # overlong: a trailing zero group
        b"\xff" * 10 + b"\x01",  # wider than 64 bits
    ],
)
def test_unsigned_refuses_what_automerge_refuses(data: bytes) -> None:
    with pytest.raises(LEB128Error):
        decode_uleb128(data, 0)


def test_encode_refuses_values_outside_64_bits() -> None:
    with pytest.raises(ValueError, match="outside"):
        encode_uleb128(2**64)
    with pytest.raises(ValueError, match="outside"):
        encode_uleb128(-1)
