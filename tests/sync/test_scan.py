"""Reading msgpack structure from headers: where values end, in one piece or many, at no cost
beyond the bytes; and the places a broken frame's error is reported from."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldsync.sync import scan
from tests.client.helpers import peak_allocation
from tests.sync.test_codec import msgpack_values, packed

values = msgpack_values.map(packed)


@given(values, st.binary(max_size=8), st.lists(st.integers(1, 50), max_size=20))
def test_the_end_of_a_value_is_found_however_its_bytes_arrive(
    value: bytes, after: bytes, cuts: list[int]
) -> None:
    assert scan.value_end(value + after, 0) == len(value)
    finder = scan.ValueEnd()
    buf, start = b"", 0
    for size in [*cuts, len(value)]:
        buf += value[start : start + size]
        start += size
        found = finder.find(buf)
        assert found == (len(value) if len(buf) >= len(value) else None)
        if found is not None:
            break
    with pytest.raises(scan.Incomplete):
        scan.value_end(value[:-1], 0)


def test_dropping_read_bytes_keeps_the_reading_place() -> None:
    first, second = packed({"a": [1, 2, 3]}), packed([b"x" * 300, "y"])
    finder = scan.ValueEnd(len(first))
    buf = bytearray(first + second[:10])
    assert finder.find(buf) is None
    del buf[: len(first)]
    finder.shift(len(first))
    buf += second[10:]
    assert finder.find(buf) == len(second)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x92\x01\xc1", "byte 2: 0xc1 is not msgpack"),
        (b"\x91" * (scan.MAX_DEPTH + 2) + b"\xc0", "nested too deeply"),
    ],
)
def test_what_is_not_msgpack_is_unreadable(data: bytes, message: str) -> None:
    with pytest.raises(scan.Unreadable, match=message):
        scan.ValueEnd().find(data)
    assert scan.ValueEnd().find(b"\x91" * scan.MAX_DEPTH + b"\xc0") == scan.MAX_DEPTH + 1
    with pytest.raises(scan.Unreadable):
        scan.value_end(b"\x91\xc1", 0)
    with pytest.raises(scan.Unreadable, match="nested too deeply"):
        scan.value_end(b"\x91" * 5000 + b"\xc0", 0)


CLAIMS = {
    "nested arrays": b"\xdc\xff\xff" * 1000,
    "nested maps": b"\xde\xff\xff\xa1k" * 600,
    "array claiming 2^32-1 items": b"\xdd\xff\xff\xff\xff" + b"\xc0" * 100,
    "str claiming 4 GB": b"\xdb\xff\xff\xff\xff" + b"x" * 100,
    "bin claiming 4 GB": b"\xc6\xff\xff\xff\xff" + b"x" * 100,
}


@pytest.mark.parametrize("name", CLAIMS)
def test_declared_sizes_cost_nothing(name: str) -> None:
    data = CLAIMS[name]

    def read() -> None:
        for piece in range(1, len(data) + 1, 97):
            scan.ValueEnd().find(data[:piece])
        scan.value_end(data, 0)

    assert peak_allocation(read) < 64 * 1024


def test_a_map_is_read_pair_by_pair_and_a_place_found_by_its_path() -> None:
    data = packed({"t": "push", "entities": [{"changes": [b"a", "b"]}], "push_id": 5})
    keys = [key for key, *_ in scan.map_items(data, 0)]
    assert keys == ["t", "entities", "push_id"]
    span = scan.locate(data, ("entities", 0, "changes", 1))
    assert span is not None
    assert data[span[0] : span[1]] == packed("b")
    assert scan.locate(data, ("entities", 1)) is None
    assert scan.locate(data, ("nope",)) is None
    assert scan.locate(data[:-1], ("push_id",)) is None


def test_the_first_repeated_key_or_extension_is_found_in_byte_order() -> None:
    repeated = b"\x82\xa1a\x91\x82\xa1k\x01\xa1k\x02\xa1b\xc0"  # {"a": [{"k": 1, "k": 2}], ...}
    assert scan.first_finding(repeated) == scan.Finding(("a", 0), 8, "k")
    extension = packed({"a": 1, "b": [0, 0]})[:-1] + b"\xd4\x01\x00"
    found = scan.first_finding(extension)
    assert found == scan.Finding(("b", 1), len(extension) - 3)
    assert scan.first_finding(packed({"a": [1, {"b": 2}], "c": 3})) is None
    # Past its budget of values it has nothing to say, and stops.
    many = packed({"a": [0] * (scan.MAX_STEPS + 10), "a2": 1})[:-4] + b"\xa1a\x01"
    assert scan.first_finding(many) is None
