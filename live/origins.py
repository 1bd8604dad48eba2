"""Which browser pages may open a sync WebSocket: an allow-list of Origins.

Browsers send an ``Origin`` header with every WebSocket handshake and let any page connect
anywhere, so without a check a malicious page could use a logged-in user's stored token
from their browser. Native clients (the SDK, apps) send no Origin and are always allowed:
the header protects browsers, it is not authentication.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

ANY_ORIGIN = "*"
ENV_VARIABLE = "FIELDSYNC_ALLOWED_ORIGINS"


def normalize_origin(origin: str) -> str:
    """Origins compare case-insensitively and without a trailing slash."""
    return origin.strip().rstrip("/").lower()


class OriginPolicy:
    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = frozenset(normalize_origin(o) for o in allowed if o.strip())

    def allows(self, origin: str | None) -> bool:
        """True for no Origin (not a browser), ``*`` configured, or a listed Origin."""
        if origin is None:
            return True
        return ANY_ORIGIN in self.allowed or normalize_origin(origin) in self.allowed


def same_origin(origin: str | None, host: str | None) -> bool:
    """True when a page of this server opens the socket (its Origin names the Host the
    request came to): the web app under ``/app/`` needs no allow-list entry. A page elsewhere
    cannot forge its Origin, and a Host it sets can only name its own server."""
    if origin is None or host is None:
        return False
    scheme, _, rest = normalize_origin(origin).partition("://")
    return scheme in ("http", "https") and rest == host.strip().lower()


READ_HEADERS = ("Authorization", "If-None-Match", "Range")
UPLOAD_HEADERS = (
    "Content-Type", "Upload-Offset", "Upload-Length", "Upload-Sha256", "Upload-Type", "Upload-Name",
)  # fmt: skip
EXPOSED_HEADERS = "ETag, Content-Range, Retry-After"


def cors_headers(policy: OriginPolicy, origin: str | None) -> dict[str, str]:
    """What lets a page from an allowed Origin read an HTTP answer (the snapshot, an
    attachment): nothing for no Origin (not a browser) or one not on the list, which the
    browser then blocks. ``ETag``, ``Content-Range`` and ``Retry-After`` are readable."""
    if origin is None or not policy.allows(origin):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": EXPOSED_HEADERS,
        "Vary": "Origin",
    }


def preflight_headers(
    policy: OriginPolicy, origin: str | None, methods: Iterable[str] = ("GET",)
) -> dict[str, str] | None:
    """The answer to a browser's CORS preflight for ``methods`` with a bearer token (and,
    for ``PATCH``, the upload headers); None when the Origin may not ask."""
    headers = cors_headers(policy, origin)
    if not headers:
        return None
    allowed = sorted(set(methods))
    request_headers = READ_HEADERS + (UPLOAD_HEADERS if "PATCH" in allowed else ())
    return {
        **headers,
        "Access-Control-Allow-Methods": ", ".join(allowed),
        "Access-Control-Allow-Headers": ", ".join(request_headers),
        "Access-Control-Max-Age": "600",
    }


def origins_from_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """``FIELDSYNC_ALLOWED_ORIGINS``: comma-separated, e.g. ``https://app.example.org``."""
    return [o for o in environ.get(ENV_VARIABLE, "").split(",") if o.strip()]
