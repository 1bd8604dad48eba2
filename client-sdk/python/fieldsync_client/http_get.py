"""A minimal streaming HTTP/1.1 GET on asyncio streams, for the snapshot endpoint.

The SDK needs exactly one HTTP request (``GET /projects/{id}/snapshot``), and an HTTP client
library would be its largest dependency. This one sends one request per connection
(``Connection: close``), reads the status and headers, and yields the body as it arrives,
whether it comes chunked, with a ``Content-Length`` or until the server closes. Anything
unusual (a redirect, a proxy, HTTP/2) is the caller's cue to use the WebSocket instead.
Parsing is in pure functions; only :func:`http_get` does I/O.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "HttpError",
    "HttpResponse",
    "http_get",
    "http_request",
    "parse_chunk_size",
    "parse_head",
]

MAX_LINE_BYTES = 16 * 1024
MAX_HEADERS = 100
READ_BYTES = 256 * 1024


class HttpError(Exception):
    """The request failed or the response cannot be read."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: AsyncIterator[bytes]


def parse_head(status_line: bytes, header_lines: list[bytes]) -> tuple[int, dict[str, str]]:
    """The status code and headers of a response head (lines without their CRLF)."""
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(f"malformed header line: {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), headers


def parse_chunk_size(line: bytes) -> int:
    """The size in a chunked-encoding size line (extensions after ``;`` are ignored)."""
    text = line.split(b";", 1)[0].strip()
    if not text or len(text) > 16:
        raise HttpError(f"bad chunk size line: {line[:80]!r}")
    try:
        return int(text, 16)
    except ValueError:
        raise HttpError(f"bad chunk size line: {line[:80]!r}") from None


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError("a response line is too long") from None
    except asyncio.IncompleteReadError:
        raise HttpError("the connection closed in the middle of the response") from None
    return line[:-2]


async def _exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise HttpError("the connection closed in the middle of the body") from None


async def _chunked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size = parse_chunk_size(await _line(reader))
        if size == 0:
            while await _line(reader):  # trailers, up to the empty line
                pass
            return
        while size > 0:
            piece = await _exactly(reader, min(size, READ_BYTES))
            size -= len(piece)
            yield piece
        if await _line(reader) != b"":
            raise HttpError("a chunk is longer than its size says")


async def _sized(reader: asyncio.StreamReader, size: int) -> AsyncIterator[bytes]:
    while size > 0:
        piece = await _exactly(reader, min(size, READ_BYTES))
        size -= len(piece)
        yield piece


async def _until_closed(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while piece := await reader.read(READ_BYTES):
        yield piece


def _body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> AsyncIterator[bytes]:
    coding = headers.get("transfer-encoding", "").lower()
    if coding == "chunked":
        return _chunked(reader)
    if coding:
        raise HttpError(f"unsupported transfer encoding {coding!r}")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HttpError(f"bad Content-Length {length!r}")
        return _sized(reader, int(length))
    return _until_closed(reader)


def http_get(
    url: str, headers: Mapping[str, str], *, read_timeout: float
) -> AbstractAsyncContextManager[HttpResponse]:
    """``async with http_get(url, headers, read_timeout=...) as response:``; the connection
    closes when the block ends. ``read_timeout`` bounds connecting and reading the head."""
    return http_request("GET", url, headers, read_timeout=read_timeout)


@asynccontextmanager
async def http_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    read_timeout: float,
) -> AsyncIterator[HttpResponse]:
    """One request (with ``body`` when it has one, e.g. an attachment upload's PATCH);
    like :func:`http_get`, ``read_timeout`` also bounds sending the body."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"not an http(s) URL: {url!r}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context = ssl.create_default_context() if secure else None
    try:
        async with asyncio.timeout(read_timeout):
            reader, writer = await asyncio.open_connection(
                parts.hostname, port, ssl=context, limit=MAX_LINE_BYTES
            )
    except (OSError, TimeoutError) as exc:
        raise HttpError(f"cannot connect to {parts.netloc}: {exc}") from exc
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        if body or method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body:
            writer.write(body)
        try:
            async with asyncio.timeout(read_timeout):
                await writer.drain()
                status_line = await _line(reader)
                header_lines: list[bytes] = []
                while line := await _line(reader):
                    header_lines.append(line)
                    if len(header_lines) > MAX_HEADERS:
                        raise HttpError("too many response headers")
        except (OSError, TimeoutError) as exc:
            raise HttpError(f"no answer from {parts.netloc}: {exc}") from exc
        status, response_headers = parse_head(status_line, header_lines)
        yield HttpResponse(status, response_headers, _body(reader, response_headers))
    finally:
        writer.close()
        with suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
