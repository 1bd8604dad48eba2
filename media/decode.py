"""The decoding process: one image in, thumbnails and the shared copy out.

Run as ``python -m fieldsync.media.decode INPUT OUTDIR KEEP_LOCATION MAX_PIXELS`` by
``media.processing``, never inside a server or worker process: a hostile file that crashes
the decoder, exhausts its memory or hangs it takes only this process down, which the parent
kills after its time limit. Pillow's decompression-bomb bound is an error here, not a
warning.

Writes ``small.jpg``, ``large.jpg`` and ``shared`` into OUTDIR and prints one JSON line
(``width``, ``height``, ``location_removed``). A file that is not a decodable image of its
type exits with status 2 and the reason on stderr: trying again would not help.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import warnings
from pathlib import Path

from PIL import Image, ImageOps

THUMBNAILS = {"small": 256, "large": 1280}
GPS_IFD = 0x8825
UNDECODABLE = 2
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


class UndecodableError(Exception):
    """The file is not an image this process can read (a permanent failure)."""


def without_location_jpeg(data: bytes) -> tuple[bytes, bool]:
    """The JPEG with the GPS block of its EXIF data and its XMP packet removed, every other
    byte (the image data above all) unchanged; and whether anything was removed."""
    if data[:2] != b"\xff\xd8":
        raise UndecodableError("not a JPEG stream")
    out = [data[:2]]
    pos, removed = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise UndecodableError("broken JPEG segment structure")
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the rest is image data
            break
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segment = data[pos : pos + 2 + length]
        payload = segment[4:]
        if marker == 0xE1 and payload.startswith(b"Exif\x00\x00"):
            exif = Image.Exif()
            exif.load(payload)
            if GPS_IFD in exif:
                del exif[GPS_IFD]
                body = exif.tobytes()
                if not body.startswith(b"Exif\x00\x00"):
                    body = b"Exif\x00\x00" + body
                segment = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
                removed = True
        elif marker == 0xE1 and payload.startswith(_XMP):
            segment, removed = b"", True
        out.append(segment)
        pos += 2 + length
    out.append(data[pos:])
    return b"".join(out), removed


def _has_location(image: Image.Image) -> bool:
    return GPS_IFD in image.getexif()


def process(data: bytes, out: Path, keep_location: bool, max_pixels: int) -> dict[str, object]:
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise UndecodableError(f"image of {width}x{height} pixels exceeds {max_pixels} pixels")
        kind = image.format
        located = _has_location(image)
        image.draft("RGB", (THUMBNAILS["large"], THUMBNAILS["large"]))
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UndecodableError(f"decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UndecodableError(f"cannot decode the image: {exc}") from exc
    upright = ImageOps.exif_transpose(image).convert("RGB")
    for name, edge in THUMBNAILS.items():
        thumb = upright.copy()
        thumb.thumbnail((edge, edge))
        thumb.save(out / f"{name}.jpg", "JPEG", quality=82, optimize=True)
    removed = False
    if keep_location or not located:
        shared = data
    elif kind == "JPEG":
        shared, removed = without_location_jpeg(data)
    else:  # PNG or WebP with EXIF: re-encoded losslessly without any metadata
        buffer = io.BytesIO()
        clean = Image.open(io.BytesIO(data))
        clean.save(buffer, kind, lossless=True) if kind == "WEBP" else clean.save(buffer, kind)
        shared, removed = buffer.getvalue(), True
    (out / "shared").write_bytes(shared)
    return {"width": width, "height": height, "location_removed": removed}


def main(argv: list[str]) -> int:
    source, out, keep, max_pixels = argv
    try:
        result = process(Path(source).read_bytes(), Path(out), keep == "1", int(max_pixels))
    except UndecodableError as exc:
        print(str(exc)[:400], file=sys.stderr)
        return UNDECODABLE
    except Exception as exc:  # a Python error is deterministic: trying again would not help
        print(f"cannot process the image: {type(exc).__name__}: {exc}"[:400], file=sys.stderr)
        return UNDECODABLE
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
