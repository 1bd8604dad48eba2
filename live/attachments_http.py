"""Attachments over HTTP: resumable upload, status, download with ranges, thumbnails.

Routes under ``/projects/{project_id}/attachments/{attachment_id}`` (docs/attachments.md):

- ``GET``: the attachment's status, or how many bytes of its upload the server holds.
- ``PATCH .../content``: one part of the upload at ``Upload-Offset``, with the whole file's
  ``Upload-Length`` and ``Upload-Sha256`` (and optionally the client's ``Upload-Type`` and
  ``Upload-Name``). The last part completes it. Same id and bytes again: a no-op.
- ``GET .../content`` and ``GET .../thumbnails/{small|large}``: the processed files, for
  members, with ``Range`` and ``ETag``/``If-None-Match``.

Access is decided like the snapshot's: a bearer token, then membership on every request
(an unknown project, a project the user is not in and another project's attachment all get
the same 404); viewers may read but not upload. The type is read from the bytes, never from
a name or header. A part is acknowledged only once stored and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote
from uuid import UUID

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fieldsync.auth.tokens import TokenClaims
from fieldsync.live.http_auth import bearer_claims, cors_preflight
from fieldsync.live.origins import cors_headers
from fieldsync.live.snapshot_http import none_match
from fieldsync.media import entity
from fieldsync.media.blobs import BlobStore, original_key
from fieldsync.media.detect import SNIFF_BYTES, detect_type, display_name, is_sha256
from fieldsync.media.limits import AttachmentLimits
from fieldsync.model.schema import is_valid_entity_id
from fieldsync.store.attachment_records import (
    AttachmentRefusedError,
    AttachmentRow,
    OffsetMismatchError,
    UploadRow,
)
from fieldsync.store.errors import StoreError
from fieldsync.store.ports import AttachmentPort, ChangeLogPort, Storage
from fieldsync.store.records import Rejected

log = logging.getLogger(__name__)

SERVER_SENDER = "server"
UPLOAD_LEVELS = frozenset({"lead", "specialist"})
THUMBNAILS = ("small", "large")
_RANGE = re.compile(r"\Abytes=(\d*)-(\d*)\Z")


class _Refusal(Exception):  # noqa: N818 (an answer, not an error)
    """Ends a request with an error answer: a code, a message, and sometimes more."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.response: Response = JSONResponse({"code": code, "message": message, **extra}, status)

    @classmethod
    def answering(cls, response: Response) -> _Refusal:
        refusal = cls(response.status_code, "", "")
        refusal.response = response
        return refusal


def _not_found() -> _Refusal:
    return _Refusal(404, "project_unavailable", "no such project or attachment, or not a member")


def attachment_routes() -> list[Route]:
    base = "/projects/{project_id}/attachments/{attachment_id}"
    return [
        Route(base, _guarded(_status), methods=["GET"]),
        Route(base + "/content", _guarded(_upload), methods=["PATCH"]),
        Route(base + "/content", _guarded(_download), methods=["GET"]),
        Route(base + "/thumbnails/{size}", _guarded(_thumbnail), methods=["GET"]),
        *(
            Route(path, cors_preflight, methods=["OPTIONS"])
            for path in (base, base + "/content", base + "/thumbnails/{size}")
        ),
    ]


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """The handler with every refusal and storage failure turned into its answer."""

    async def endpoint(request: Request) -> Response:
        try:
            response = await handler(request)
        except _Refusal as refusal:
            response = refusal.response
        except AttachmentRefusedError as exc:
            extra = {"received": exc.received} if isinstance(exc, OffsetMismatchError) else {}
            response = JSONResponse(
                {"code": exc.code, "message": str(exc), **extra}, status_code=exc.status
            )
        except StoreError as exc:
            log.warning("attachment request failed: %s", exc)
            response = _unavailable("storage cannot serve right now")
        except OSError as exc:
            log.warning("blob storage failed: %s", exc)
            response = _unavailable("blob storage failed; try again")
        except ClientDisconnect:
            return Response(status_code=400)
        response.headers.update(
            cors_headers(request.app.state.origins, request.headers.get("origin"))
        )
        return response

    return endpoint


class _Context:
    """A request that passed the token, id and membership checks."""

    def __init__(
        self,
        request: Request,
        claims: TokenClaims,
        project_id: UUID,
        level: str,
        row: AttachmentRow | None,
    ) -> None:
        state = request.app.state
        self.request = request
        self.user_id = claims.user_id
        self.project_id = project_id
        self.level = level
        self.attachment_id: str = request.path_params["attachment_id"]
        self.port: AttachmentPort = state.storage.attachments
        self.blobs: BlobStore = state.blobs
        self.limits: AttachmentLimits = state.attachment_limits
        self.changelog: ChangeLogPort = state.sync.changelog
        self._row = row

    def attachment(self) -> AttachmentRow | None:
        """This project's attachment of that id (another project's is not found)."""
        if self._row is not None and self._row.project_id != self.project_id:
            raise _not_found()
        return self._row


async def _context(request: Request) -> _Context:
    state = request.app.state
    storage: Storage = state.storage
    if storage.attachments is None or getattr(state, "blobs", None) is None:
        raise _Refusal(
            501, "attachments_unavailable", "this server keeps no attachments (no PostgreSQL)"
        )
    claims = await bearer_claims(request)
    if isinstance(claims, Response):
        raise _Refusal.answering(claims)
    try:
        project_id = UUID(request.path_params["project_id"])
    except ValueError:
        raise _not_found() from None
    if not is_valid_entity_id(request.path_params["attachment_id"]):
        raise _Refusal(
            400, "invalid_attachment_id", "attachment ids are 1-64 characters of A-Z a-z 0-9 _ -"
        )
    level, row = await storage.attachments.access(
        project_id, claims.user_id, request.path_params["attachment_id"]
    )
    if level is None:
        raise _not_found()
    return _Context(request, claims, project_id, level, row)


async def _status(request: Request) -> Response:
    ctx = await _context(request)
    row = ctx.attachment()
    if row is not None:
        return JSONResponse(_describe(row))
    upload = await ctx.port.upload(ctx.attachment_id)
    if upload is None or upload.project_id != ctx.project_id:
        raise _not_found()
    return JSONResponse(
        {"attachment_id": upload.attachment_id, "status": "uploading",
         "received": upload.received, "size": upload.size, "sha256": upload.sha256}
    )  # fmt: skip


def _describe(row: AttachmentRow) -> dict[str, object]:
    return {
        "attachment_id": row.attachment_id, "status": row.status, "received": row.size,
        "size": row.size, "sha256": row.sha256, "content_type": row.content_type,
        "file_name": row.file_name, "failure": row.failure,
        "variants": sorted(row.variants), "width": row.width, "height": row.height,
    }  # fmt: skip


def _header_int(request: Request, name: str) -> int:
    raw = request.headers.get(name, "")
    if not raw.isdigit() or len(raw) > 15:
        raise _Refusal(400, "bad_upload_header", f"{name} must be a non-negative integer")
    return int(raw)


async def _read_body(request: Request, limit: int) -> list[bytes]:
    """The body as the chunks it arrived in (never joined: the blob store writes and hashes
    them one by one)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refusal(
            413, "chunk_too_large", f"one request carries at most {limit} bytes", limit=limit
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refusal(
                413, "chunk_too_large", f"one request carries at most {limit} bytes", limit=limit
            )
        if chunk:
            chunks.append(chunk)
    return chunks


def _head(chunks: list[bytes], length: int) -> bytes:
    """The first ``length`` bytes of the chunks, copying no more than that."""
    head = b""
    for chunk in chunks:
        head += chunk[: length - len(head)]
        if len(head) >= length:
            break
    return head


def _sha256(chunks: list[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


async def _upload(request: Request) -> Response:
    ctx = await _context(request)
    if ctx.level not in UPLOAD_LEVELS:
        raise _Refusal(403, "forbidden", f"a {ctx.level} may not upload attachments")
    offset = _header_int(request, "upload-offset")
    size = _header_int(request, "upload-length")
    sha256 = request.headers.get("upload-sha256", "").lower()
    if not is_sha256(sha256):
        raise _Refusal(400, "bad_upload_header", "Upload-Sha256 must be 64 hex digits")
    if size > ctx.limits.max_file_bytes:
        raise _Refusal(
            413, "too_large", f"attachments are at most {ctx.limits.max_file_bytes} bytes",
            limit=ctx.limits.max_file_bytes,
        )  # fmt: skip
    existing = ctx.attachment()
    if existing is not None:
        if existing.sha256 != sha256:
            raise _Refusal(409, "attachment_id_taken", "this id names an attachment of other bytes")
        return JSONResponse(_describe(existing))  # the same bytes again: nothing to do
    limit = min(ctx.limits.max_chunk_bytes, max(size - offset, 0))
    chunks = await _read_body(request, limit)
    length = sum(len(chunk) for chunk in chunks)
    if offset + length > size:
        raise _Refusal(400, "beyond_declared_length", "the part ends after Upload-Length")
    claimed = request.headers.get("upload-type")
    name = display_name(unquote(request.headers.get("upload-name", ""))[:1024] or None)
    detected: str | None = None
    if offset == 0:
        head = _head(chunks, SNIFF_BYTES)
        if len(head) < min(size, SNIFF_BYTES):
            raise _Refusal(400, "part_too_small", f"the first part needs {SNIFF_BYTES} bytes")
        detected = detect_type(head)
        if detected is None:
            raise _Refusal(415, "unsupported_type", "not a JPEG, PNG, WebP or PDF file")
        if claimed and claimed.split(";")[0].strip().lower() != detected:
            raise _Refusal(
                415, "type_mismatch", f"the content is {detected}, not {claimed}",
                detected=detected,
            )  # fmt: skip
    reservation = await ctx.port.begin_upload(
        UploadRow(ctx.attachment_id, ctx.project_id, sha256, size, detected, name, ctx.user_id),
        ctx.limits,
    )
    upload = reservation.upload
    if upload.project_id != ctx.project_id:
        raise _not_found()
    if (upload.sha256, upload.size) != (sha256, size):
        raise _Refusal(
            409, "upload_mismatch",
            "an upload under this id declared other bytes (Upload-Sha256, Upload-Length)",
        )  # fmt: skip
    if offset == 0 and reservation.same_content:
        same = await _stored_original(ctx, sha256)
        if same is not None:  # this project already holds these bytes: nothing to upload
            response = await _finish(ctx, UploadRow(
                ctx.attachment_id, ctx.project_id, sha256, same.size, same.content_type,
                name, ctx.user_id, same.size,
            ), status=201)  # fmt: skip
            if upload.received:  # parts sent before the project had these bytes
                await ctx.blobs.delete_parts(ctx.attachment_id)
            return response
    if offset != upload.received:
        raise OffsetMismatchError(upload.received)
    if offset == 0 and length == size:  # the whole file at once: no parts to keep
        key = original_key(sha256)
        if await ctx.blobs.size(key) == size:  # another project's copy: only check the hash
            whole = await asyncio.to_thread(_sha256, chunks) == sha256
        else:  # hashed while written, and kept only if it matches
            whole = await ctx.blobs.put(key, chunks, sha256=sha256)
        if not whole:
            await ctx.port.drop_upload(ctx.attachment_id)
            raise _hash_mismatch()
        return await _finish(ctx, upload, status=201)
    try:
        await ctx.blobs.put_part(ctx.attachment_id, offset, chunks)
        upload = await ctx.port.part_stored(ctx.attachment_id, offset, length)
        if upload.received < size:
            return JSONResponse(
                {"attachment_id": ctx.attachment_id, "status": "uploading",
                 "received": upload.received, "size": size},
                status_code=202,
            )  # fmt: skip
        whole = await ctx.blobs.join_parts(
            ctx.attachment_id, upload.parts, size, original_key(sha256), sha256
        )
    except FileNotFoundError:  # the earlier parts expired meanwhile (media.gc)
        await ctx.port.drop_upload(ctx.attachment_id)
        await ctx.blobs.delete_parts(ctx.attachment_id)
        raise OffsetMismatchError(0) from None
    if not whole:
        await ctx.port.drop_upload(ctx.attachment_id)
        await ctx.blobs.delete_parts(ctx.attachment_id)
        raise _hash_mismatch()
    response = await _finish(ctx, upload, status=201)
    await ctx.blobs.delete_parts(ctx.attachment_id)
    return response


def _hash_mismatch() -> _Refusal:
    return _Refusal(
        422, "hash_mismatch",
        "the bytes do not hash to Upload-Sha256; the upload was discarded, start again",
    )  # fmt: skip


async def _stored_original(ctx: _Context, sha256: str) -> AttachmentRow | None:
    """The stored original of these bytes (its size and type), if blob storage has it."""
    size = await ctx.blobs.size(original_key(sha256))
    if size is None:
        return None
    head = await ctx.blobs.read(original_key(sha256), 0, SNIFF_BYTES)
    content_type = detect_type(head)
    assert content_type is not None, "stored originals passed detection"
    return AttachmentRow("", ctx.project_id, sha256, size, content_type, None, None, "uploaded")


async def _finish(ctx: _Context, upload: UploadRow, *, status: int) -> Response:
    """Publish the attachment entity (a deterministic change: a retry appends nothing),
    then record the attachment and queue its processing."""
    assert upload.content_type is not None
    values = {
        "sha256": upload.sha256, "size": upload.size, "content_type": upload.content_type,
        "file_name": upload.file_name, "uploaded_by": str(upload.uploaded_by),
        "status": "uploaded",
    }  # fmt: skip
    [result] = await ctx.changelog.append(
        ctx.project_id, [entity.creation(ctx.attachment_id, values)], SERVER_SENDER
    )
    if isinstance(result, Rejected):
        raise _Refusal(
            409,
            "attachment_id_taken",
            f"the attachment entity was refused: {result.rejection.message}",
        )
    row = AttachmentRow(
        ctx.attachment_id, ctx.project_id, upload.sha256, upload.size, upload.content_type,
        upload.file_name, upload.uploaded_by, "uploaded",
    )  # fmt: skip
    await ctx.port.finish_upload(row)
    return JSONResponse(_describe(row), status_code=status)


async def _download(request: Request) -> Response:
    return await _serve_variant(await _context(request), "shared")


async def _thumbnail(request: Request) -> Response:
    size = request.path_params["size"]
    if size not in THUMBNAILS:
        raise _Refusal(404, "no_such_thumbnail", "thumbnails are small and large")
    return await _serve_variant(await _context(request), size)


async def _serve_variant(ctx: _Context, name: str) -> Response:
    row = ctx.attachment()
    if row is None or row.status == "deleted":
        raise _not_found()
    if row.status != "ready":
        raise _Refusal(
            409, "not_ready", f"the attachment is {row.status}", attachment_status=row.status,
            failure=row.failure,
        )  # fmt: skip
    variant = row.variants.get(name)
    if variant is None:
        raise _Refusal(404, "no_such_thumbnail", f"this attachment has no {name} file")
    etag = f'"{variant.sha256}"'
    headers = {
        "ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=31536000",
        "X-Content-Type-Options": "nosniff",
    }  # fmt: skip
    if none_match(ctx.request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    wanted = _range(ctx.request.headers.get("range"), variant.size)
    if wanted is None:
        data = await ctx.blobs.read(variant.key)
        return Response(data, media_type=variant.content_type, headers=headers)
    start, end = wanted
    if start >= variant.size or start > end:
        return Response(
            status_code=416, headers={**headers, "Content-Range": f"bytes */{variant.size}"}
        )
    data = await ctx.blobs.read(variant.key, start, end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{variant.size}"
    return Response(data, status_code=206, media_type=variant.content_type, headers=headers)


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range as inclusive (start, end), clamped to the size; None for no
    header or one this server answers with the whole file (several ranges, other units)."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:  # the last N bytes
        suffix = int(match[2])
        return max(size - suffix, 0), size - 1
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    return start, min(end, size - 1)


def _unavailable(message: str) -> JSONResponse:
    """A failure of the database or the blob store: nothing was done, retry shortly."""
    return JSONResponse(
        {"code": "server_unavailable", "message": message},
        status_code=503,
        headers={"Retry-After": "5"},
    )
