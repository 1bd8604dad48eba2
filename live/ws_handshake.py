"""The WebSocket opening handshake of ``/sync``, on the request uvicorn's h11 already parsed.

uvicorn's HTTP protocol parses the upgrade request once; the checks RFC 6455 (section 4.2.1)
asks of a server are made here on that parse, and the answers are built here, so the request
is never turned back into bytes and parsed a second time. The checks and the statuses are
websockets' (the server's handshake before this module): no request body (400), GET (405),
HTTP/1.1 (505), ``Connection: Upgrade`` and ``Upgrade: websocket`` (426), one
``Sec-WebSocket-Key`` that is base64 of 16 bytes and one ``Sec-WebSocket-Version: 13`` (400).
No extension and no subprotocol is negotiated: ``/sync`` speaks plain binary frames.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Headers = Sequence[tuple[bytes, bytes]]
"""Request headers as uvicorn keeps them: lower-case names, raw values."""

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_PROTOCOL = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+(?:/[-!#$%&'*+.^_`|~0-9a-zA-Z]+)?")
_BROWSER_HINT = (
    "\nYou cannot access a WebSocket server directly with a browser. You need a WebSocket client.\n"
)


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """What the handshake needs of the request h11 parsed."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: Headers

    @property
    def path(self) -> str:
        return self.target.partition(b"?")[0].decode("latin-1")

    def values(self, name: bytes) -> list[bytes]:
        """Every value of the header ``name`` (lower case), in the order sent."""
        return [value for key, value in self.headers if key == name]

    def single(self, name: bytes) -> str | None:
        """The header's value if it was sent exactly once, else None."""
        found = self.values(name)
        return found[0].decode("latin-1") if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class Refused:
    """An HTTP answer other than 101: the status, its reason phrase, a plain-text body."""

    status: int
    phrase: str
    body: str
    headers: tuple[tuple[str, str], ...] = field(default=())


def has_body(request: UpgradeRequest) -> bool:
    """An upgrade request carries no body: one that announces a body is not an upgrade."""
    if request.values(b"transfer-encoding"):
        return True
    return any(value.strip() != b"0" for value in request.values(b"content-length"))


def check(request: UpgradeRequest) -> str | Refused:
    """The ``Sec-WebSocket-Accept`` value for a valid upgrade, or the answer refusing it."""
    if request.method != b"GET":
        return _refuse(
            405,
            "Method Not Allowed",
            f"unsupported HTTP method: {request.method.decode('latin-1')}",
            (("Allow", "GET"),),
        )
    if request.http_version != b"1.1":
        return _refuse(
            505,
            "HTTP Version Not Supported",
            f"unsupported HTTP version: HTTP/{request.http_version.decode('latin-1')}",
        )
    connection = _tokens(request.values(b"connection"), _TOKEN)
    if connection is None:
        return _invalid("Connection", "not a list of tokens")
    if "upgrade" not in (token.lower() for token in connection):
        return _upgrade_required("Connection", connection)
    upgrade = _tokens(request.values(b"upgrade"), _PROTOCOL)
    if upgrade is None:
        return _invalid("Upgrade", "not a list of protocols")
    if not (len(upgrade) == 1 and upgrade[0].lower() == "websocket"):
        return _upgrade_required("Upgrade", upgrade)
    keys = request.values(b"sec-websocket-key")
    if len(keys) != 1:
        return _invalid("Sec-WebSocket-Key", "multiple values" if keys else None)
    key = keys[0]
    try:
        raw_key = base64.b64decode(key, validate=True)
    except binascii.Error:
        raw_key = b""
    if len(raw_key) != 16:
        return _invalid("Sec-WebSocket-Key", key.decode("latin-1"))
    versions = request.values(b"sec-websocket-version")
    if len(versions) != 1:
        return _invalid("Sec-WebSocket-Version", "multiple values" if versions else None)
    if versions[0] != b"13":
        return _invalid("Sec-WebSocket-Version", versions[0].decode("latin-1"))
    return accept_key(key)


def accept_key(key: bytes) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455, section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()


def response(
    status: int, phrase: str, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> bytes:
    """An HTTP/1.1 response as it goes on the wire."""
    lines = [f"HTTP/1.1 {status} {phrase}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body


def switching_protocols(accept: str, date: str, extra: Iterable[tuple[str, str]]) -> bytes:
    """The 101 answer accepting the upgrade, with no extension and no subprotocol."""
    headers = [
        ("Date", date),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept),
        *extra,
    ]
    return response(101, "Switching Protocols", headers)


def refusal(refused: Refused, date: str) -> bytes:
    """A refused upgrade's answer, which closes the connection."""
    body = refused.body.encode()
    headers = [
        ("Date", date),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", "text/plain; charset=utf-8"),
        *refused.headers,
    ]
    return response(refused.status, refused.phrase, headers, body)


def http_date() -> str:
    return email.utils.formatdate(usegmt=True)


def _tokens(values: list[bytes], item: re.Pattern[str]) -> list[str] | None:
    """The items of comma-separated header values (RFC 9110 section 5.6.1: empty elements
    are skipped, a value with none is malformed); None if one is malformed."""
    found: list[str] = []
    for value in values:
        items = [part.strip(" \t") for part in value.decode("latin-1").split(",")]
        items = [part for part in items if part]
        if not items or not all(item.fullmatch(part) for part in items):
            return None
        found.extend(items)
    return found


def _refuse(
    status: int, phrase: str, why: str, headers: tuple[tuple[str, str], ...] = ()
) -> Refused:
    return Refused(status, phrase, f"Failed to open a WebSocket connection: {why}.\n", headers)


def _upgrade_required(header: str, tokens: list[str]) -> Refused:
    value = ", ".join(tokens) if tokens else None
    why = f"missing {header} header" if value is None else f"invalid {header} header: {value}"
    return Refused(
        426,
        "Upgrade Required",
        f"Failed to open a WebSocket connection: {why}.\n{_BROWSER_HINT}",
        (("Upgrade", "websocket"),),
    )


def _invalid(header: str, value: str | None) -> Refused:
    if value is None:
        why = f"missing {header} header"
    elif not value:
        why = f"empty {header} header"
    else:
        why = f"invalid {header} header: {value}"
    return _refuse(400, "Bad Request", why)
