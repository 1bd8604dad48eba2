"""The opening handshake on h11's parse (``live.ws_handshake``) answers every request as
websockets' server protocol answered it: the same status, the same accept key."""

from __future__ import annotations

import base64

import h11
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.server import ServerProtocol

from fieldsync.live.ws_handshake import (
    Refused,
    UpgradeRequest,
    check,
    has_body,
    refusal,
    switching_protocols,
)

GOOD_KEY = base64.b64encode(b"0123456789abcdef").decode()


def _choices(*values: str | None) -> st.SearchStrategy[list[str]]:
    """A header sent not at all, once with one of ``values``, or twice."""
    one = st.sampled_from([v for v in values if v is not None])
    return st.one_of(st.just([]), one.map(lambda v: [v]), st.lists(one, min_size=2, max_size=2))


requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "GET", "GET", "POST", "PUT"]),
        "version": st.sampled_from(["1.1", "1.1", "1.1", "1.0"]),
        "connection": _choices(
            "Upgrade", "keep-alive, Upgrade", "upgrade", ", Upgrade,", "close", "", "up grade"
        ),
        "upgrade": _choices("websocket", "WebSocket", "h2c", "websocket, h2c", "websocket/13", "@"),
        "key": _choices(
            GOOD_KEY,
            base64.b64encode(b"fifteen bytes!!").decode(),
            base64.b64encode(b"seventeen bytes!!").decode(),
            "not base64 at all",
            GOOD_KEY.rstrip("="),
        ),
        "version_header": _choices("13", "8", "13, 8", ""),
    }
)


def _headers(fields: dict[str, object]) -> list[tuple[str, str]]:
    names = {
        "connection": "Connection",
        "upgrade": "Upgrade",
        "key": "Sec-WebSocket-Key",
        "version_header": "Sec-WebSocket-Version",
    }
    headers = [("Host", "sync.example")]
    for field, name in names.items():
        values = fields[field]
        assert isinstance(values, list)
        headers.extend((name, value) for value in values)
    return headers


@given(requests)
def test_every_upgrade_is_answered_as_websockets_answered_it(fields: dict[str, object]) -> None:
    headers = _headers(fields)
    method, version = str(fields["method"]), str(fields["version"])
    theirs = ServerProtocol().accept(
        Request("/sync", Headers(headers), method=method, protocol=f"HTTP/{version}")
    )
    ours = check(
        UpgradeRequest(
            method.encode(),
            b"/sync",
            version.encode(),
            [(name.lower().encode(), value.encode()) for name, value in headers],
        )
    )
    if isinstance(ours, Refused):
        assert ours.status == theirs.status_code
        # The same words up to the detail (websockets adds the causes of a bad key).
        assert ours.body.split(":")[:2] == theirs.body.decode().split(":")[:2]
        assert dict(ours.headers).items() <= dict(theirs.headers.raw_items()).items()
    else:
        assert theirs.status_code == 101
        assert ours == theirs.headers["Sec-WebSocket-Accept"]


def test_the_answers_are_http_responses_h11_reads() -> None:
    accepted = switching_protocols("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "Sun, 06 Nov 1994", [])
    client = h11.Connection(h11.CLIENT)
    upgrade = [("Host", "x"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]
    client.send(h11.Request(method="GET", target="/", headers=upgrade))
    client.receive_data(accepted)
    answer = client.next_event()
    assert isinstance(answer, h11.InformationalResponse)
    assert answer.status_code == 101
    assert (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in answer.headers

    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.receive_data(refusal(Refused(404, "Not Found", "no WebSocket endpoint here\n"), "d"))
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 404
    body = client.next_event()
    assert isinstance(body, h11.Data)
    assert body.data == b"no WebSocket endpoint here\n"


def test_an_upgrade_that_announces_a_body_is_not_one() -> None:
    def request(*headers: tuple[bytes, bytes]) -> UpgradeRequest:
        return UpgradeRequest(b"GET", b"/sync", b"1.1", list(headers))

    assert not has_body(request())
    assert not has_body(request((b"content-length", b"0"), (b"content-length", b"0")))
    assert has_body(request((b"content-length", b"5")))
    assert has_body(request((b"transfer-encoding", b"chunked")))
