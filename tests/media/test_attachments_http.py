"""Attachments end to end over HTTP: real uvicorn, PostgreSQL, S3 server, pgqueuer, Pillow."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fieldsync.media.blobs import S3Blobs, original_key
from fieldsync.media.detect import SNIFF_BYTES
from fieldsync.media.entity import values_of
from fieldsync.store.postgres import PostgresStorage
from tests.live_server import MemberFactory
from tests.media.images import decompression_bomb, has_gps, photo, png
from tests.media.service import (
    TEST_LIMITS,
    attachment_server,
    attachment_url,
    queue_consumer,
    send_part,
    wait_status,
)


@pytest.fixture
async def service(database_url: str, s3_blobs: S3Blobs) -> AsyncIterator[str]:
    async with attachment_server(database_url, s3_blobs) as base:
        yield base


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def attachment_statuses(database_url: str, project: uuid.UUID, aid: str) -> list[str]:
    """The statuses the change log carried for one attachment entity, in log order."""
    storage = await PostgresStorage.open(database_url)
    try:
        log = await storage.change_log().read_since(project, 0, 10_000)
        statuses = []
        document: bytes | None = None
        for change in log.changes:
            if change.entity_id != aid:
                continue
            document = (document or b"") + change.change
            statuses.append(str(values_of("attachment", document)["status"]))
        return statuses
    finally:
        await storage.close()


async def test_upload_processing_and_download_by_another_member(
    service: str,
    http: httpx.AsyncClient,
    project: uuid.UUID,
    member: MemberFactory,
    database_url: str,
    s3_blobs: S3Blobs,
) -> None:
    _, uploader = await member(project, "specialist")
    _, reader = await member(project, "viewer")
    data = photo(800, 600, gps=True)
    url = attachment_url(service, project, "att-" + uuid.uuid4().hex[:8])
    answer = await send_part(http, url, uploader, data, 0, len(data), **{"Upload-Name": "a.jpg"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "uploaded"
    assert (await http.get(url + "/content", headers=auth(reader))).json()["code"] == "not_ready"
    async with queue_consumer(database_url, s3_blobs):
        ready = await wait_status(http, url, reader, {"ready", "failed"})
    assert ready["status"] == "ready", ready
    assert ready["variants"] == ["large", "shared", "small"]
    small = await http.get(url + "/thumbnails/small", headers=auth(reader))
    assert small.status_code == 200
    assert Image.open(io.BytesIO(small.content)).size == (256, 192)
    shared = await http.get(url + "/content", headers=auth(reader))
    assert shared.headers["content-type"] == "image/jpeg"
    assert not has_gps(shared.content)  # the project does not share photo locations
    etag = shared.headers["etag"]
    again = await http.get(url + "/content", headers={**auth(reader), "If-None-Match": etag})
    assert again.status_code == 304
    part = await http.get(url + "/content", headers={**auth(reader), "Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == shared.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(shared.content)}"
    tail = await http.get(url + "/content", headers={**auth(reader), "Range": "bytes=-5"})
    assert tail.content == shared.content[-5:]
    beyond = await http.get(url + "/content", headers={**auth(reader), "Range": "bytes=99999999-"})
    assert beyond.status_code == 416
    aid = url.rsplit("/", 1)[1]
    assert await attachment_statuses(database_url, project, aid) == [
        "uploaded", "processing", "ready",
    ]  # fmt: skip
    # the same bytes again under the same id: a no-op
    repeat = await send_part(http, url, uploader, data, 0, len(data))
    assert repeat.status_code == 200
    assert await attachment_statuses(database_url, project, aid) == [
        "uploaded", "processing", "ready",
    ]  # fmt: skip


async def test_the_same_photo_attached_twice_is_one_blob(
    service: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory,
    s3_blobs: S3Blobs, pool: asyncpg.Pool,
) -> None:  # fmt: skip
    _, token = await member(project)
    data = photo(300, 200, seed=7)
    first = attachment_url(service, project, uuid.uuid4().hex)
    second = attachment_url(service, project, uuid.uuid4().hex)
    assert (await send_part(http, first, token, data, 0, len(data))).status_code == 201
    # the second attachment sends only its first part: the project holds these bytes
    answer = await send_part(http, second, token, data, 0, 64)
    assert answer.status_code == 201, answer.text
    sha = hashlib.sha256(data).hexdigest()
    async with pool.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM attachments WHERE sha256 = $1", sha)
    assert rows == 2
    assert await s3_blobs.size(original_key(sha)) == len(data)
    names = s3_blobs._client.list_objects_v2(Bucket=s3_blobs.bucket)["Contents"]
    assert [o["Key"] for o in names] == [original_key(sha)]


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(1, 200_000), min_size=1, max_size=5), lost=st.booleans())
async def test_an_upload_cut_anywhere_resumes_to_identical_bytes(
    service: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory,
    s3_blobs: S3Blobs, cuts: list[int], lost: bool,
) -> None:  # fmt: skip
    _, token = await member(project)
    data = photo(400, 300, seed=len(cuts) + 11) + bytes(cuts[0] % 97)
    url = attachment_url(service, project, uuid.uuid4().hex)
    # the first part carries at least the bytes the type is read from
    points = [*sorted({max(c % len(data), SNIFF_BYTES) for c in cuts}), len(data)]
    offset = 0
    for point in points:
        if lost:  # the connection dropped: the client asks how much is stored first
            status = await http.get(url, headers=auth(token))
            if status.status_code == 200:
                offset = status.json()["received"]
        if point <= offset:
            continue
        answer = await send_part(http, url, token, data, offset, point)
        assert answer.status_code in (201, 202), answer.text
        offset = answer.json()["received"]
    status = (await http.get(url, headers=auth(token))).json()
    assert status["status"] == "uploaded"
    sha = hashlib.sha256(data).hexdigest()
    assert status["sha256"] == sha
    stored = await s3_blobs.read(original_key(sha))
    assert hashlib.sha256(stored).hexdigest() == sha


async def test_a_part_at_the_wrong_offset_is_told_where_to_continue(
    service: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    data = photo(200, 100, seed=5)
    url = attachment_url(service, project, uuid.uuid4().hex)
    assert (await send_part(http, url, token, data, 0, 100)).status_code == 202
    answer = await send_part(http, url, token, data, 50, 150)
    assert answer.status_code == 409
    assert answer.json() == {
        "code": "offset_mismatch", "message": "the server holds 100 bytes: continue from there",
        "received": 100,
    }  # fmt: skip
    assert (await send_part(http, url, token, data, 100, len(data))).status_code == 201


async def test_hostile_uploads_get_clear_errors_and_store_nothing(
    service: str, http: httpx.AsyncClient, project: uuid.UUID, other_project: uuid.UUID,
    member: MemberFactory, s3_blobs: S3Blobs, database_url: str, pool: asyncpg.Pool,
) -> None:  # fmt: skip
    _, lead = await member(project)
    _, viewer = await member(project, "viewer")
    _, outsider = await member(other_project)

    async def refused(url: str, token: str, data: bytes, **headers: str) -> tuple[int, str]:
        answer = await send_part(http, url, token, data, 0, len(data), **headers)
        return answer.status_code, answer.json().get("code", "")

    def new() -> str:
        return attachment_url(service, project, uuid.uuid4().hex)

    jpeg = photo(100, 100, seed=9)
    assert await refused(new(), lead, jpeg, **{"Upload-Type": "application/pdf"}) == (
        415, "type_mismatch",
    )  # fmt: skip
    assert await refused(new(), lead, b"MZ\x90\x00" + b"\x00" * 100) == (415, "unsupported_type")
    assert await refused(new(), lead, b"<html><script>alert(1)</script>") == (
        415, "unsupported_type",
    )  # fmt: skip
    big = b"\xff\xd8\xff" + b"\x00" * (TEST_LIMITS.max_file_bytes + 1)
    assert await refused(new(), lead, big) == (413, "too_large")
    assert await refused(new(), viewer, jpeg) == (403, "forbidden")
    assert await refused(new(), outsider, jpeg) == (404, "project_unavailable")
    wrong_hash = await http.patch(
        new() + "/content", content=jpeg,
        headers={**auth(lead), "Upload-Offset": "0", "Upload-Length": str(len(jpeg)),
                 "Upload-Sha256": "0" * 64},
    )  # fmt: skip
    assert (wrong_hash.status_code, wrong_hash.json()["code"]) == (422, "hash_mismatch")
    for bad in ("a.jpg", "x" * 65, "a%20b", "%C3%A9"):
        bad_id = attachment_url(service, project, bad)
        assert await refused(bad_id, lead, jpeg) == (400, "invalid_attachment_id")
    slashed = attachment_url(service, project, "..%2F..%2Fetc")
    assert (await send_part(http, slashed, lead, jpeg, 0, len(jpeg))).status_code == 404
    # path tricks in the file name are only a display name
    named = new()
    status, _ = await refused(named, lead, jpeg, **{"Upload-Name": "..%2F..%2Fetc%2Fpasswd"})
    assert status == 201
    assert (await http.get(named, headers=auth(lead))).json()["file_name"] == "passwd"
    # another project's attachment id: not found, whoever asks and however
    other_url = named.replace(str(project), str(other_project))
    for path in ("", "/content", "/thumbnails/small"):
        answer = await http.get(other_url + path, headers=auth(outsider))
        assert (answer.status_code, answer.json()["code"]) == (404, "project_unavailable")
    answer = await http.get(named + "/content", headers=auth(outsider))
    assert answer.status_code == 404
    no_token = await http.get(named)
    assert no_token.status_code == 401
    # nothing stored but the one accepted photo
    async with pool.acquire() as conn:
        kept = await conn.fetch("SELECT sha256 FROM attachments WHERE project_id = $1", project)
        uploads = await conn.fetchval(
            "SELECT count(*) FROM attachment_uploads WHERE project_id = $1", project
        )
    assert [r["sha256"] for r in kept] == [hashlib.sha256(jpeg).hexdigest()]
    assert uploads == 0
    objects = s3_blobs._client.list_objects_v2(Bucket=s3_blobs.bucket).get("Contents", [])
    assert [o["Key"] for o in objects] == [original_key(hashlib.sha256(jpeg).hexdigest())]


async def test_a_decompression_bomb_and_a_broken_image_end_failed(
    service: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory,
    database_url: str, s3_blobs: S3Blobs,
) -> None:  # fmt: skip
    _, token = await member(project)
    bomb, broken = decompression_bomb(), png(64, 64)[:80]
    urls = []
    for data in (bomb, broken):
        url = attachment_url(service, project, uuid.uuid4().hex)
        assert (await send_part(http, url, token, data, 0, len(data))).status_code == 201
        urls.append(url)
    async with queue_consumer(database_url, s3_blobs):
        failed = [await wait_status(http, url, token, {"ready", "failed"}) for url in urls]
    assert [f["status"] for f in failed] == ["failed", "failed"]
    assert "pixels" in failed[0]["failure"] or "bomb" in failed[0]["failure"]
    answer = await http.get(urls[0] + "/content", headers=auth(token))
    assert (answer.status_code, answer.json()["code"]) == (409, "not_ready")
    aid = urls[0].rsplit("/", 1)[1]
    assert (await attachment_statuses(database_url, project, aid))[-1] == "failed"


async def test_members_cannot_write_attachment_entities(
    service: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory,
    database_url: str,
) -> None:  # fmt: skip
    from fieldsync.media.entity import creation
    from fieldsync.store.records import Rejected

    lead_id, _ = await member(project)
    storage = await PostgresStorage.open(database_url)
    try:
        values = {"sha256": "a" * 64, "size": 1, "content_type": "image/png", "status": "ready"}
        [result] = await storage.change_log().append(
            project, [creation("forged-" + uuid.uuid4().hex[:6], values)], str(lead_id),
            as_member=lead_id,
        )  # fmt: skip
    finally:
        await storage.close()
    assert isinstance(result, Rejected)
    assert result.rejection.code.value == "forbidden_entity"
