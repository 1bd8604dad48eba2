"""A browser page from an allowed Origin may upload an attachment (PATCH, with the upload
headers) and read its answers; pages from elsewhere get no CORS headers."""

from __future__ import annotations

import hashlib
import uuid

import httpx

from fieldsync.media.blobs import LocalBlobs
from tests.live_server import MemberFactory, running_server
from tests.media.images import photo
from tests.media.service import TEST_LIMITS, attachment_url

APP = "https://app.example.org"


async def test_a_page_from_an_allowed_origin_may_upload_and_read_the_answers(
    database_url: str, project: uuid.UUID, member: MemberFactory, local_blobs: LocalBlobs
) -> None:
    _, token = await member(project, "specialist")
    data = photo(64, 48)
    async with (
        running_server(
            database_url, blobs=local_blobs, attachment_limits=TEST_LIMITS, allowed_origins=[APP]
        ) as base,
        httpx.AsyncClient() as http,
    ):
        url = attachment_url(f"http://{base}", project, "cors-" + uuid.uuid4().hex[:8])
        asked = {
            "Origin": APP,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization,upload-offset,upload-length,"
            "upload-sha256,upload-name,content-type",
        }
        preflight = await http.options(url + "/content", headers=asked)
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == APP
        assert preflight.headers["access-control-allow-methods"] == "GET, PATCH"
        allowed = {
            h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
        }
        assert set(asked["Access-Control-Request-Headers"].split(",")) <= allowed
        # the status and the thumbnails are read only: their preflight offers GET alone
        for path in ("", "/thumbnails/small"):
            read_only = await http.options(url + path, headers=asked)
            assert read_only.headers["access-control-allow-methods"] == "GET"
            assert "upload-offset" not in read_only.headers["access-control-allow-headers"].lower()

        upload_headers = {
            "Origin": APP, "Authorization": f"Bearer {token}", "Upload-Offset": "0",
            "Upload-Length": str(len(data)), "Upload-Sha256": hashlib.sha256(data).hexdigest(),
            "Content-Type": "application/octet-stream",
        }  # fmt: skip
        stored = await http.patch(url + "/content", content=data, headers=upload_headers)
        assert stored.status_code == 201, stored.text
        assert stored.headers["access-control-allow-origin"] == APP
        # a refusal is readable too, so the page can tell it from a network error
        refused = await http.patch(
            url + "/content", content=data, headers={**upload_headers, "Upload-Offset": "x"}
        )
        assert refused.status_code == 400
        assert refused.headers["access-control-allow-origin"] == APP
        assert "Retry-After" in refused.headers["access-control-expose-headers"]

        elsewhere = {**asked, "Origin": "https://evil.example.com"}
        assert (await http.options(url + "/content", headers=elsewhere)).status_code == 403
        answer = await http.patch(
            url + "/content", content=data,
            headers={**upload_headers, "Origin": "https://evil.example.com"},
        )  # fmt: skip
        assert "access-control-allow-origin" not in answer.headers
