"""What a file is, from its first bytes: never from its name or a header a client sent.

Only the types the product shows are accepted: photos (JPEG, PNG, WebP) and PDF
documents. A file is recognised by its magic bytes; a client's claimed type is checked
against them (a PNG claimed as a PDF is refused with ``type_mismatch``).
"""

from __future__ import annotations

import re
import unicodedata

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
"""Types processing decodes (thumbnails, location stripping)."""

ACCEPTED_TYPES = frozenset({*IMAGE_TYPES, "application/pdf"})

SNIFF_BYTES = 32
"""How many leading bytes :func:`detect_type` needs."""

_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
FILE_NAME_MAX = 255


def detect_type(head: bytes) -> str | None:
    """The media type the leading bytes announce, or None when it is none we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def is_sha256(value: str) -> bool:
    """A SHA-256 digest as 64 lower-case hex digits."""
    return _SHA256.match(value) is not None


def display_name(raw: str | None) -> str | None:
    """A client's file name made safe to show: the last path segment, no control
    characters, at most 255 characters. It is only ever displayed: storage paths are built
    from server-made keys, never from it."""
    if raw is None:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if name in ("", ".", ".."):
        return None
    return name[:FILE_NAME_MAX]
