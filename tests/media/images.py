"""Test images made on the spot: photos with and without a GPS position, hostile files."""

from __future__ import annotations

import io
import os

from PIL import Image

GPS_IFD = 0x8825


def photo(width: int = 800, height: int = 600, *, gps: bool = False, seed: int = 0) -> bytes:
    """A JPEG with noise (so it does not compress to nothing), EXIF with a camera model and,
    if asked, a GPS position."""
    size = width * height * 3
    pixels = os.urandom(size) if seed == 0 else bytes((i * seed) % 251 for i in range(size))
    noise = Image.frombytes("RGB", (width, height), pixels)
    exif = Image.Exif()
    exif[0x0110] = "FieldCam 3"  # Model
    if gps:
        exif[GPS_IFD] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def photo_of_size(target: int, seed: int = 1) -> bytes:
    """A JPEG of roughly ``target`` bytes (random noise, quality 95)."""
    side = int((target / 1.1) ** 0.5 / 1.0)
    noise = Image.frombytes("RGB", (side, side // 3), os.urandom(side * (side // 3) * 3))
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=95)
    return out.getvalue()


def png(width: int = 64, height: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def decompression_bomb(side: int = 20_000) -> bytes:
    """A small PNG that claims side x side pixels (a few hundred bytes, gigabytes decoded)."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, "PNG", optimize=True)
    return out.getvalue()


def has_gps(data: bytes) -> bool:
    return GPS_IFD in Image.open(io.BytesIO(data)).getexif()
