"""The bounds of attachments: sizes, counts, processing time and tries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    max_file_bytes: int = 50 * 1024 * 1024
    """Largest attachment (``too_large``)."""
    max_chunk_bytes: int = 16 * 1024 * 1024
    """Largest body of one upload request (``chunk_too_large``)."""
    max_per_project: int = 100_000
    """Attachments (stored or uploading) per project (``too_many_attachments``)."""
    max_uploads_per_user: int = 64
    """Unfinished uploads per user in a project (``too_many_uploads``)."""
    max_image_pixels: int = 64_000_000
    """Pillow's decompression-bomb bound: larger images fail processing."""
    decode_seconds: float = 30.0
    """How long one decode may take before its process is killed."""
    decode_memory_bytes: int = 1024 * 1024 * 1024
    """Address-space limit of the decoding process."""
    max_tries: int = 3
    """Processing tries (a crash, a timeout, a killed worker) before ``failed``."""


DEFAULT_ATTACHMENT_LIMITS = AttachmentLimits()
