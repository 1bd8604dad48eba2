"""What crosses the attachment port: an attachment's record, an unfinished upload, and the
refusals of the upload path. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from fieldsync.store.errors import StoreError


@dataclass(frozen=True, slots=True)
class Variant:
    """A processed file of one attachment: where it is and what it is."""

    key: str
    size: int
    content_type: str
    sha256: str


@dataclass(frozen=True, slots=True)
class AttachmentRow:
    attachment_id: str
    project_id: UUID
    sha256: str
    size: int
    content_type: str
    file_name: str | None
    uploaded_by: UUID | None
    status: str  # uploaded, processing, ready, failed, deleted
    failure: str | None = None
    attempts: int = 0
    variants: dict[str, Variant] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class UploadRow:
    """An upload in progress: what the client declared and how many bytes are stored."""

    attachment_id: str
    project_id: UUID
    sha256: str
    size: int
    content_type: str | None
    file_name: str | None
    uploaded_by: UUID
    received: int = 0
    parts: tuple[int, ...] = ()  # offsets of the stored parts
    updated_at: datetime | None = None  # when the last part was stored (or the upload began)


@dataclass(frozen=True, slots=True)
class Reservation:
    """An upload as recorded, and whether its project already holds these bytes."""

    upload: UploadRow
    same_content: bool


class AttachmentRefusedError(StoreError):
    """The upload cannot go on as asked; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class OffsetMismatchError(AttachmentRefusedError):
    """A part was sent for another offset than the stored length; ``received`` says where
    to continue."""

    def __init__(self, received: int) -> None:
        super().__init__(
            "offset_mismatch", f"the server holds {received} bytes: continue from there"
        )
        self.received = received
