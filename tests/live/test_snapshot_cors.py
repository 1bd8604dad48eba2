"""A browser page from an allowed Origin may fetch the HTTP snapshot; other pages may not."""

from __future__ import annotations

import uuid

import httpx

from tests.live_server import MemberFactory, running_server

APP = "https://app.example.org"


async def test_an_allowed_origin_reads_the_snapshot_and_others_get_no_cors_headers(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with (
        running_server(database_url, allowed_origins=[APP]) as base,
        httpx.AsyncClient() as http,
    ):
        url = f"http://{base}/projects/{project}/snapshot"
        preflight = await http.options(
            url,
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        assert preflight.headers["access-control-allow-methods"] == "GET"

        answer = await http.get(url, headers={"Origin": APP, "Authorization": f"Bearer {token}"})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == APP
        assert "ETag" in answer.headers["access-control-expose-headers"]
        # Refusals are readable too, so the page can tell a bad token from a network error.
        refused = await http.get(url, headers={"Origin": APP})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == APP

        elsewhere = "https://evil.example.com"
        blocked = await http.options(
            url, headers={"Origin": elsewhere, "Access-Control-Request-Method": "GET"}
        )
        assert blocked.status_code == 403
        answer = await http.get(
            url, headers={"Origin": elsewhere, "Authorization": f"Bearer {token}"}
        )
        assert "access-control-allow-origin" not in answer.headers
        native = await http.get(url, headers={"Authorization": f"Bearer {token}"})
        assert native.status_code == 200
        assert "access-control-allow-origin" not in native.headers
