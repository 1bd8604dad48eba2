"""The field web app (``app/``) served under ``/app/`` from its build, ``app/dist/``.

The build is made by npm, not by pip: a server installed without it still answers ``/app/``
with a page that names the command that builds it, rather than a bare 404. The folder is
looked up per request, so building while the server runs is enough.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

DIST = Path(__file__).resolve().parents[1] / "app" / "dist"
BUILD_COMMAND = (
    "npm ci --prefix client-sdk/typescript && npm ci --prefix app && npm run build --prefix app"
)
NO_CACHE = {"sw.js", "index.html", ""}
"""Files a browser must revalidate on every load: the service worker decides what else is
fresh, and ``index.html`` names the current bundle."""


def missing_build_page(dist: Path) -> str:
    return (
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>fieldsync app: not built'
        "</title><main><h1>The fieldsync web app is not built</h1>"
        f"<p>There is no build in <code>{escape(str(dist))}</code>. From the repository root, "
        f"run:</p><pre>{escape(BUILD_COMMAND)}</pre><p>then reload this page (the server "
        "need not restart).</p></main></html>"
    )


class WebApp:
    """Static files of the build, or the page saying how to make it."""

    def __init__(self, dist: Path = DIST) -> None:
        self.dist = dist
        self.files = StaticFiles(directory=dist, html=True, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response | None = None
        if not (self.dist / "index.html").is_file():
            response = HTMLResponse(missing_build_page(self.dist), status_code=503)
            await response(scope, receive, send)
            return
        name = str(scope.get("path", "")).rsplit("/", 1)[-1]

        async def send_with_cache_policy(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start" and name in NO_CACHE:
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.files(scope, receive, send_with_cache_policy)  # type: ignore[arg-type]


async def _to_app(_: object) -> RedirectResponse:
    return RedirectResponse("/app/", status_code=308)


def web_app_routes(dist: Path = DIST) -> list[Route | Mount]:
    """``/app`` redirects to ``/app/``; ``/app/...`` serves the build."""
    return [Route("/app", _to_app, methods=["GET"]), Mount("/app", app=WebApp(dist))]
