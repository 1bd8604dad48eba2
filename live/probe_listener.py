"""``/healthz`` and ``/metrics`` on a port of their own, answered by a thread beside the
event loop.

In a reconnect storm the event loop takes each turn over thousands of connections at once,
and a probe on the main port waits its turn with them: up to 2-3 s in a storm of 10,000
(``docs/scaling.md``). A balancer with a shorter probe timeout would take a busy process out
and send its crowd to the others. Here the answer comes from a thread: it reads the
database watch's verdict (``live.status.StatusBoard``, one attribute, written by the loop),
and the interpreter hands it the lock within its switch interval (5 ms) however busy the
loop is.

``/metrics`` reads structures only the loop may touch, so the thread asks the loop to
render it (``LoopRendered``) and waits a moment: while the loop keeps up the scrape is
fresh; while it is late, the scrape is the last one it rendered, with
``fieldsync_metrics_rendered_age_seconds`` saying how old. Everything else stays on the
main port.

A few requests at a time (``MAX_CONCURRENT``, a thread each; more are closed unanswered),
each with a short socket timeout: it is a port for the balancer and the orchestrator, not
for the public, and it must stay cheap whatever connects to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fieldsync.observability.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

READ_SECONDS = 2.0
"""How long a probe connection may wait for each piece of its request."""

MAX_CONCURRENT = 8
"""Probe requests answered at once; a connection beyond them is closed at once."""

RENDER_WAIT_SECONDS = 0.2
"""How long a scrape waits for the loop to render the metrics before taking the last."""

RENDER_INTERVAL_SECONDS = 0.25
"""The loop renders the metrics at most this often, however many scrape."""

HealthAnswer = Callable[[], tuple[int, dict[str, object]]]
"""The status code and JSON body of a health answer, as ``/healthz`` gives it."""


class LoopRendered:
    """The metrics as the event loop last rendered them, asked for afresh by a scrape.

    ``render`` runs on the loop only (``call_soon_threadsafe``); a thread calling ``get``
    waits up to ``wait`` seconds for it, then takes the last rendering, however old. A
    rendering walks every send queue holding frames, so scrapers cannot make the loop render
    more than once per ``min_interval`` seconds, however many ask: a scrape within it gets
    the last rendering, and scrapes that come while one is asked for wait for that one."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        render: Callable[[], bytes],
        wait: float = RENDER_WAIT_SECONDS,
        min_interval: float = RENDER_INTERVAL_SECONDS,
    ) -> None:
        self._loop = loop
        self._render = render
        self._wait = wait
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._last = b""
        self._at = -math.inf  # never rendered
        self._asked: threading.Event | None = None  # a rendering asked of the loop

    def get(self) -> bytes:
        with self._lock:
            fresh = time.monotonic() - self._at < self._min_interval
            asked = self._asked
            ask = not fresh and asked is None
            if ask:
                asked = self._asked = threading.Event()
        if ask:
            assert asked is not None
            try:
                self._loop.call_soon_threadsafe(self._render_on_loop, asked)
            except RuntimeError:  # the loop is closed: the last rendering is all there is
                self._rendered(asked)
        if not fresh and asked is not None:
            asked.wait(self._wait)
        with self._lock:
            last, at = self._last, self._at
        age = b"%.3f" % (time.monotonic() - at) if at > -math.inf else b"+Inf"
        return last + (
            b"# HELP fieldsync_metrics_rendered_age_seconds How old this scrape is: the event "
            b"loop renders it, and a late loop leaves the last rendering\n"
            b"# TYPE fieldsync_metrics_rendered_age_seconds gauge\n"
            b"fieldsync_metrics_rendered_age_seconds " + age + b"\n"
        )

    def _render_on_loop(self, asked: threading.Event) -> None:
        try:
            rendered = self._render()
            with self._lock:
                self._last, self._at = rendered, time.monotonic()
        finally:
            self._rendered(asked)

    def _rendered(self, asked: threading.Event) -> None:
        with self._lock:
            if self._asked is asked:
                self._asked = None
        asked.set()


class _ProbeServer(ThreadingHTTPServer):
    answer: HealthAnswer
    metrics: Callable[[], bytes] | None
    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        super().__init__((host, port), _ProbeHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: not a balancer's probes
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _ProbeHandler(BaseHTTPRequestHandler):
    server: _ProbeServer
    timeout = READ_SECONDS
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/healthz":
            self._reply(*self.server.answer())
        elif path == "/metrics" and self.server.metrics is not None:
            self._send(200, CONTENT_TYPE, self.server.metrics())
        else:
            self._reply(404, {"status": "not_found", "reason": "only /healthz and /metrics"})

    def _reply(self, status: int, body: dict[str, object]) -> None:
        self._send(status, "application/json", json.dumps(body, separators=(",", ":")).encode())

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Probes come every few seconds from the balancer: no line each."""


class ProbeListener:
    """Serves ``answer()`` as ``GET /healthz`` and ``metrics()`` (if given) as
    ``GET /metrics`` on ``host:port`` (0: any free port) from daemon threads, from
    ``start()`` until ``stop()``."""

    def __init__(
        self,
        host: str,
        port: int,
        answer: HealthAnswer,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self._server = _ProbeServer(host, port)
        self._server.answer = answer
        self._server.metrics = metrics
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fieldsync-probes", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("health probes answered on port %d", self.port, extra={"event": "probe_listening"})

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
