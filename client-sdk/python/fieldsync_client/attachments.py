"""Attachments on the device: attach offline, upload by itself when online, resume after cuts.

``attach`` copies the bytes into the store's folder (named by their SHA-256, so the same
photo attached twice is one file), records the upload in the store's ``uploads`` table
beside the outbox, and adds the new attachment id to the entity's ``attachments`` list (an
ordinary offline edit), all before it returns: a crash or kill after it loses nothing.

The uploader sends waiting uploads over HTTP (``docs/attachments.md``): it asks the server
how much it holds and continues from there, part by part, so a cut costs at most one part.
A refusal the server gives for good (``type_mismatch``, ``too_large``, ...) marks the upload
``refused`` with that code; anything else (no network, a 5xx) is tried again with backoff.

The status an app shows comes first from the attachment entity (the server's word, synced
like any entity: uploaded, processing, ready, failed), else from the upload queue
(``waiting_to_upload``, ``upload_refused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from fieldsync_client.backoff import Backoff
from fieldsync_client.http_get import HttpError, http_request
from fieldsync_client.local_store import LocalStore, UploadEntry

log = logging.getLogger(__name__)

PART_BYTES = 1024 * 1024
TIMEOUT = 30.0


class UploadRefused(Exception):  # noqa: N818 (a condition, named as such)
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def local_folder(store: LocalStore) -> Path:
    return Path(store.path + ".attachments")


def local_path(store: LocalStore, sha256: str) -> Path:
    return local_folder(store) / sha256


def keep_locally(store: LocalStore, data: bytes) -> str:
    """Write the bytes to the local folder (atomically, synced); their SHA-256."""
    sha = hashlib.sha256(data).hexdigest()
    target = local_path(store, sha)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{sha}.{uuid.uuid4().hex}")
        with temp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    return sha


def http_base(sync_endpoint: str) -> str:
    """``wss://h/x/sync`` gives ``https://h/x``."""
    parts = urlsplit(sync_endpoint)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.removesuffix("/").removesuffix("/sync")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def attachment_url(base: str, project_id: str, attachment_id: str, tail: str = "") -> str:
    return f"{base}/projects/{quote(project_id, safe='')}/attachments/{attachment_id}{tail}"


async def call_server(
    method: str, url: str, token: str, body: bytes = b"", headers: Mapping[str, str] = {}
) -> tuple[int, bytes]:
    async with http_request(
        method, url, {"Authorization": f"Bearer {token}", **headers}, body, read_timeout=TIMEOUT
    ) as response:
        data = b"".join([piece async for piece in response.body])
    return response.status, data


async def upload_one(base: str, token: str, store: LocalStore, entry: UploadEntry) -> None:
    """Send one upload from where the server stands; raises UploadRefused for good,
    HttpError (or OSError) when it should be tried again."""
    url = attachment_url(base, entry.project_id, entry.attachment_id)
    status, body = await call_server("GET", url, token)
    received = 0
    if status == 200:
        answer = json.loads(body)
        if answer.get("status") != "uploading":
            return  # the server has it already
        received = int(answer["received"])
    elif status != 404:
        raise_for(status, body)
    data = local_path(store, entry.sha256).read_bytes()
    while True:
        end = min(received + PART_BYTES, len(data))
        headers = {
            "Upload-Offset": str(received),
            "Upload-Length": str(len(data)),
            "Upload-Sha256": entry.sha256,
            **({"Upload-Name": quote(entry.file_name)} if entry.file_name else {}),
        }
        status, body = await call_server(
            "PATCH", url + "/content", token, data[received:end], headers
        )
        if status in (200, 201):
            return
        if status == 202:
            received = int(json.loads(body)["received"])
            continue
        if status == 409 and json.loads(body).get("code") == "offset_mismatch":
            received = int(json.loads(body)["received"])
            continue
        raise_for(status, body)


def raise_for(status: int, body: bytes) -> None:
    try:
        answer = json.loads(body)
        code, message = str(answer["code"]), str(answer["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{status}", body[:200].decode("utf-8", "replace")
    if status >= 500 or status in (401, 429):
        raise HttpError(f"{status} {code}: {message}")  # try again later
    raise UploadRefused(code, message)


class Uploader:
    """Sends the store's waiting uploads while the client runs; woken by each attach."""

    def __init__(self, store: LocalStore, base: str, token: str, backoff: Backoff) -> None:
        self._store = store
        self.base = base
        self.token = token
        self._backoff = backoff
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.uploaded = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            waiting = self._store.uploads("waiting")
            failed = False
            for entry in waiting:
                try:
                    await upload_one(self.base, self.token, self._store, entry)
                except UploadRefused as exc:
                    self._store.set_upload_state(entry.attachment_id, "refused", exc.code, str(exc))
                except (HttpError, OSError, ValueError) as exc:
                    log.info("upload of %s paused: %s", entry.attachment_id, exc)
                    failed = True
                    break
                else:
                    self._store.set_upload_state(entry.attachment_id, "uploaded")
                    self.uploaded.set()
            delay: float | None = None
            if failed:
                delay = self._backoff.next_delay()
            else:
                self._backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
