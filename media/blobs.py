"""Blob storage behind one small interface: the local file system or S3-compatible storage.

Keys are made by the server only (``original_key``, ``part_key``, ``variant_key``), from a
SHA-256 digest or a validated attachment id, and every store refuses any other shape, so no
client-supplied name ever becomes a path. Writes are atomic: a reader sees a whole blob or
none (a temporary file renamed into place; an S3 PUT is atomic by itself).

The S3 store runs boto3 in threads; it is tested against a real S3-compatible server
(``tests/media``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from fieldsync.model.schema import is_valid_entity_id

_KEY = re.compile(
    r"\A(?:originals/[0-9a-f]{2}/[0-9a-f]{64}"
    r"|parts/[A-Za-z0-9_-]{1,64}/[0-9a-f]{16}"
    r"|variants/[A-Za-z0-9_-]{1,64}/[a-z]{1,16})\Z"
)
COPY_BYTES = 1024 * 1024


class BlobKeyError(ValueError):
    """A key the server did not make: refused before it reaches storage."""


def check_key(key: str) -> str:
    if _KEY.match(key) is None:
        raise BlobKeyError(f"not a blob key: {key!r}")
    return key


def original_key(sha256: str) -> str:
    """Where the uploaded bytes live: by content, so one photo attached twice is one blob."""
    return check_key(f"originals/{sha256[:2]}/{sha256}")


def part_key(attachment_id: str, offset: int) -> str:
    """One stored piece of an unfinished upload."""
    if not is_valid_entity_id(attachment_id):
        raise BlobKeyError(f"not an attachment id: {attachment_id!r}")
    return check_key(f"{parts_prefix(attachment_id)}{offset:016x}")


def parts_prefix(attachment_id: str) -> str:
    """Where every part of one unfinished upload lives."""
    if not is_valid_entity_id(attachment_id):
        raise BlobKeyError(f"not an attachment id: {attachment_id!r}")
    return f"parts/{attachment_id}/"


def variant_key(attachment_id: str, variant: str) -> str:
    """A thumbnail or the shared copy of one attachment."""
    if not is_valid_entity_id(attachment_id):
        raise BlobKeyError(f"not an attachment id: {attachment_id!r}")
    return check_key(f"variants/{attachment_id}/{variant}")


class BlobStore(Protocol):
    """Bytes by key. Every method raises OSError (or a subclass) when storage fails."""

    async def put(
        self, key: str, data: bytes | Sequence[bytes], *, sha256: str | None = None
    ) -> bool:
        """Store ``data`` (bytes, or chunks written one after another) at ``key`` atomically,
        replacing what was there. With ``sha256``, the bytes are hashed as they are written
        and kept only if they match: False, and nothing stored, if they do not."""
        ...

    async def put_part(self, attachment_id: str, offset: int, data: Sequence[bytes]) -> None:
        """Store one part of an unfinished upload durably (each byte written once).
        FileNotFoundError for a part after the first when the upload's earlier parts are
        gone (expired): the upload must start again."""
        ...

    async def join_parts(
        self, attachment_id: str, offsets: Sequence[int], size: int, key: str, sha256: str
    ) -> bool:
        """Make the upload's parts (at ``offsets``, ``size`` bytes in all) the blob ``key``
        if they hash to ``sha256``; False, and nothing written, if they do not.
        FileNotFoundError when a part is gone. The parts are left to ``delete_parts``."""
        ...

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes from ``start`` (to the end when None); FileNotFoundError."""
        ...

    async def size(self, key: str) -> int | None:
        """The blob's size, or None when there is none."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Remove these blobs (missing ones are no error)."""
        ...

    async def delete_parts(self, attachment_id: str) -> None:
        """Remove every stored part of one upload, counted or not."""
        ...

    async def close(self) -> None: ...


class _ThreadedBlobs:
    """A :class:`BlobStore` over blocking calls, each run in a worker thread so the event loop
    never waits on a disk or a network; subclasses implement the ``_`` methods."""

    def _put(self, key: str, chunks: Sequence[bytes], sha256: str | None) -> bool:
        raise NotImplementedError

    def _put_part(self, attachment_id: str, offset: int, chunks: Sequence[bytes]) -> None:
        raise NotImplementedError

    def _join_parts(
        self, attachment_id: str, offsets: Sequence[int], size: int, key: str, sha256: str
    ) -> bool:
        raise NotImplementedError

    def _read(self, key: str, start: int, length: int | None) -> bytes:
        raise NotImplementedError

    def _size(self, key: str) -> int | None:
        raise NotImplementedError

    def _delete(self, keys: Sequence[str]) -> None:
        raise NotImplementedError

    def _delete_parts(self, attachment_id: str) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        return None

    async def put(
        self, key: str, data: bytes | Sequence[bytes], *, sha256: str | None = None
    ) -> bool:
        chunks = [data] if isinstance(data, bytes) else data
        return await asyncio.to_thread(self._put, key, chunks, sha256)

    async def put_part(self, attachment_id: str, offset: int, data: Sequence[bytes]) -> None:
        await asyncio.to_thread(self._put_part, attachment_id, offset, data)

    async def join_parts(
        self, attachment_id: str, offsets: Sequence[int], size: int, key: str, sha256: str
    ) -> bool:
        return await asyncio.to_thread(self._join_parts, attachment_id, offsets, size, key, sha256)

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        return await asyncio.to_thread(self._read, key, start, length)

    async def size(self, key: str) -> int | None:
        return await asyncio.to_thread(self._size, key)

    async def delete(self, keys: Sequence[str]) -> None:
        await asyncio.to_thread(self._delete, keys)

    async def delete_parts(self, attachment_id: str) -> None:
        await asyncio.to_thread(self._delete_parts, attachment_id)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)


class LocalBlobs(_ThreadedBlobs):
    """Blobs as files under ``root`` (by default ``<data dir>/attachments``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write(self, key: str, chunks: Sequence[bytes]) -> tuple[str, str]:
        """A synced temporary file beside ``key`` holding the chunks; its path and the
        SHA-256 of what it holds (hashed as it is written)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return temp, digest.hexdigest()

    def _put(self, key: str, chunks: Sequence[bytes], sha256: str | None) -> bool:
        temp, digest = self._write(key, chunks)
        if sha256 is not None and digest != sha256:
            os.unlink(temp)
            return False
        os.replace(temp, self._path(key))
        return True

    def _upload_file(self, attachment_id: str) -> Path:
        """One file per unfinished upload, each part written at its offset: finishing is a
        read (to hash) and a rename, never a second copy."""
        return self._path(part_key(attachment_id, 0))

    def _put_part(self, attachment_id: str, offset: int, chunks: Sequence[bytes]) -> None:
        path = self._upload_file(attachment_id)
        flags = os.O_WRONLY
        if offset == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags |= os.O_CREAT
        fd = os.open(path, flags, 0o644)  # FileNotFoundError: the earlier parts are gone
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(fd, view, offset)
                    offset += written
                    view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _join_parts(
        self, attachment_id: str, offsets: Sequence[int], size: int, key: str, sha256: str
    ) -> bool:
        path = self._upload_file(attachment_id)
        digest = hashlib.sha256()
        with path.open("r+b") as f:
            left = size
            while left and (block := f.read(min(COPY_BYTES, left))):
                digest.update(block)
                left -= len(block)
            if left or digest.hexdigest() != sha256:
                return False
            if os.fstat(f.fileno()).st_size != size:  # a part written again, shorter
                f.truncate(size)
                os.fsync(f.fileno())
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        return True

    def _read(self, key: str, start: int, length: int | None) -> bytes:
        with self._path(key).open("rb") as f:
            f.seek(start)
            return f.read() if length is None else f.read(length)

    def _size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty

    def _delete_parts(self, attachment_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root / parts_prefix(attachment_id))


class S3Blobs(_ThreadedBlobs):
    """Blobs as objects of one bucket of an S3-compatible service (AWS S3, MinIO, ...)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        prefix: str = "",
    ) -> None:
        import boto3  # only deployments that use S3 need it
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or "us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            if self._missing(exc):
                raise FileNotFoundError(kwargs.get("Key")) from exc
            raise OSError(f"S3 {method} failed: {exc}") from exc

    def _put_part(self, attachment_id: str, offset: int, chunks: Sequence[bytes]) -> None:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._call("put_object", Key=self._name(part_key(attachment_id, offset)), Body=data)

    def _join_parts(
        self, attachment_id: str, offsets: Sequence[int], size: int, key: str, sha256: str
    ) -> bool:
        parts = [part_key(attachment_id, offset) for offset in offsets]
        digest = hashlib.sha256()
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            for part in parts:
                body = self._call("get_object", Key=self._name(part))["Body"]
                while block := body.read(COPY_BYTES):
                    digest.update(block)
                    spool.write(block)
            if digest.hexdigest() != sha256:
                return False
            spool.seek(0)
            try:
                self._client.upload_fileobj(spool, self.bucket, self._name(key))
            except Exception as exc:
                raise OSError(f"S3 upload failed: {exc}") from exc
        return True

    def _read(self, key: str, start: int, length: int | None) -> bytes:
        if length == 0:
            return b""
        end = "" if length is None else str(start + length - 1)
        answer = self._call("get_object", Key=self._name(key), Range=f"bytes={start}-{end}")
        data: bytes = answer["Body"].read()
        return data

    def _size(self, key: str) -> int | None:
        try:
            return int(self._call("head_object", Key=self._name(key))["ContentLength"])
        except FileNotFoundError:
            return None

    def _delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._name(k)} for k in keys[start : start + 1000]]
            if batch:
                self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})

    def _delete_parts(self, attachment_id: str) -> None:
        prefix = self.prefix + parts_prefix(attachment_id)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        try:
            names = [item["Key"] for page in pages for item in page.get("Contents", [])]
        except Exception as exc:
            raise OSError(f"S3 list failed: {exc}") from exc
        for start in range(0, len(names), 1000):
            batch = [{"Key": name} for name in names[start : start + 1000]]
            self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})

    def _put(self, key: str, chunks: Sequence[bytes], sha256: str | None) -> bool:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            return False
        self._call("put_object", Key=self._name(key), Body=data)
        return True

    def _close(self) -> None:
        self._client.close()


def blob_store_from_environment(data_dir: Path, environ: dict[str, str] | None = None) -> BlobStore:
    """S3 when ``FIELDSYNC_S3_BUCKET`` is set (with ``FIELDSYNC_S3_ENDPOINT``, ``_REGION``,
    ``_PREFIX``; credentials the usual AWS way), else files under ``data_dir/attachments``."""
    env = os.environ if environ is None else environ
    bucket = env.get("FIELDSYNC_S3_BUCKET")
    if bucket:
        return S3Blobs(
            bucket,
            endpoint_url=env.get("FIELDSYNC_S3_ENDPOINT") or None,
            region=env.get("FIELDSYNC_S3_REGION") or None,
            prefix=env.get("FIELDSYNC_S3_PREFIX", ""),
        )
    return LocalBlobs(data_dir / "attachments")
