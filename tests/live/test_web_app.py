"""``/app/``: the web app's build served, or a page naming the command that makes it; and a
page of the server's own origin may open the sync socket."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.applications import Starlette

from fieldsync.live.origins import same_origin
from fieldsync.live.web_app import BUILD_COMMAND, web_app_routes


def _client(dist: Path) -> httpx.AsyncClient:
    app = Starlette(routes=web_app_routes(dist))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_without_a_build_the_page_names_the_command(tmp_path: Path) -> None:
    async with _client(tmp_path / "dist") as client:
        answer = await client.get("/app/")
        redirect = await client.get("/app")
    assert answer.status_code == 503
    assert BUILD_COMMAND.replace("&", "&amp;") in answer.text
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/app/"


async def test_the_build_is_served_with_the_shell_revalidated(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>app</title>")
    (dist / "sw.js").write_text("// worker")
    (dist / "app.js").write_text("// app")
    async with _client(dist) as client:
        index, worker, script = [
            await client.get(p) for p in ("/app/", "/app/sw.js", "/app/app.js")
        ]
        missing = await client.get("/app/nothing.js")
    assert index.text == "<!doctype html><title>app</title>"
    assert index.headers["cache-control"] == "no-cache"
    assert worker.headers["cache-control"] == "no-cache"
    assert script.status_code == 200
    assert "cache-control" not in script.headers
    assert missing.status_code == 404


def test_same_origin_is_the_host_the_request_came_to() -> None:
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("https://Sync.Example.org", "sync.example.org")
    assert not same_origin("http://evil.example", "127.0.0.1:8000")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("null", "127.0.0.1:8000")
    assert not same_origin(None, "127.0.0.1:8000")
    assert not same_origin("http://127.0.0.1:8000", None)
