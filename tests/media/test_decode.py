"""The decoding process on real images: thumbnails, location stripping, hostile files."""

from __future__ import annotations

import dataclasses
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fieldsync.media.decode import without_location_jpeg
from fieldsync.media.detect import detect_type, display_name
from fieldsync.media.limits import DEFAULT_ATTACHMENT_LIMITS
from fieldsync.media.processing import DecodeCrashedError, UndecodableError, decode
from tests.media.images import decompression_bomb, has_gps, photo, png


def test_types_come_from_the_bytes() -> None:
    assert detect_type(photo(32, 32)) == "image/jpeg"
    assert detect_type(png()) == "image/png"
    assert detect_type(b"%PDF-1.7\n") == "application/pdf"
    assert detect_type(b"MZ\x90\x00 an executable") is None
    assert detect_type(b"<svg xmlns=...>") is None


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ana\\site.jpg", "site.jpg"),
        ("..", None),
        ("a\x00b\nc.jpg", "abc.jpg"),
        ("", None),
    ],
)
def test_file_names_are_for_display_only(raw: str, shown: str | None) -> None:
    assert display_name(raw) == shown


@given(st.text(max_size=400))
def test_a_displayed_name_is_never_a_path(raw: str) -> None:
    name = display_name(raw)
    if name is not None:
        assert "/" not in name
        assert "\\" not in name
        assert name not in (".", "..")
        assert len(name) <= 255


async def test_thumbnails_in_two_sizes_and_location_stripped() -> None:
    original = photo(2000, 1500, gps=True)
    assert has_gps(original)
    decoded = await decode(original, False, DEFAULT_ATTACHMENT_LIMITS)
    assert (decoded.width, decoded.height) == (2000, 1500)
    assert Image.open(io.BytesIO(decoded.outputs["small"])).size == (256, 192)
    assert Image.open(io.BytesIO(decoded.outputs["large"])).size == (1280, 960)
    assert decoded.location_removed
    shared = decoded.outputs["shared"]
    assert not has_gps(shared)
    assert Image.open(io.BytesIO(shared)).getexif()[0x0110] == "FieldCam 3"  # the rest stays
    for thumb in ("small", "large"):
        assert not has_gps(decoded.outputs[thumb])


async def test_a_project_that_shares_locations_keeps_the_original() -> None:
    original = photo(300, 200, gps=True)
    decoded = await decode(original, True, DEFAULT_ATTACHMENT_LIMITS)
    assert decoded.outputs["shared"] == original
    assert not decoded.location_removed


def test_stripping_changes_no_image_data() -> None:
    original = photo(120, 80, gps=True)
    stripped, removed = without_location_jpeg(original)
    assert removed
    assert Image.open(io.BytesIO(stripped)).tobytes() == Image.open(io.BytesIO(original)).tobytes()
    assert without_location_jpeg(photo(50, 50))[1] is False


async def test_a_decompression_bomb_fails_for_good() -> None:
    bomb = decompression_bomb()
    assert len(bomb) < 100_000
    with pytest.raises(UndecodableError, match=r"pixels|bomb"):
        await decode(bomb, False, DEFAULT_ATTACHMENT_LIMITS)


async def test_a_truncated_image_fails_for_good() -> None:
    with pytest.raises(UndecodableError):
        await decode(photo(400, 300)[:600], False, DEFAULT_ATTACHMENT_LIMITS)


async def test_a_decoder_that_runs_too_long_is_killed() -> None:
    limits = dataclasses.replace(DEFAULT_ATTACHMENT_LIMITS, decode_seconds=0.01)
    with pytest.raises(DecodeCrashedError, match="longer than"):
        await decode(photo(400, 300), False, limits)


async def test_a_decoder_out_of_memory_is_a_crash_not_a_hang() -> None:
    limits = dataclasses.replace(DEFAULT_ATTACHMENT_LIMITS, decode_memory_bytes=64 * 1024 * 1024)
    with pytest.raises((DecodeCrashedError, UndecodableError)):
        await decode(photo(4000, 3000), False, limits)


@settings(max_examples=5, deadline=None)
@given(st.binary(min_size=0, max_size=2000))
async def test_garbage_behind_an_image_signature_fails_for_good(tail: bytes) -> None:
    for signature in (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"):
        with pytest.raises(UndecodableError):
            await decode(signature + tail, False, DEFAULT_ATTACHMENT_LIMITS)
