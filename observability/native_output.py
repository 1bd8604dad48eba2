"""What native code writes to stderr becomes structured, rate-limited log lines.

The Automerge binding's Rust code prints a panic's message (and, with ``RUST_BACKTRACE``
set, a backtrace of dozens of lines) straight to file descriptor 2, past Python's logging:
the JSON log would hold raw text that no collector can parse, as much of it as a client can
make the binding panic. The server refuses the values known to panic before the binding
reads them (``model.automerge_format.op_columns``); this is the guard for anything else native.

``capture_native_output`` points descriptor 2 at a pipe and gives Python's own
``sys.stderr`` (which the log handler writes to) a duplicate of the real descriptor. A
thread reads the pipe: output that arrives together (within ``BURST_SECONDS``) is one
event, logged as one line with its first line as the message and the rest cut to
``MAX_TEXT`` characters, within the rate of a ``LogLimiter``.
"""

from __future__ import annotations

import io
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable

from fieldsync.observability.log_limits import LogLimiter

BURST_SECONDS = 0.05
MAX_TEXT = 2_000
_READ_BYTES = 65_536
_MAX_BURST_BYTES = 65_536

log = logging.getLogger("fieldsync.native")


def capture_native_output(limiter: LogLimiter | None = None) -> Callable[[], None]:
    """Start capturing; returns a function that stops it and restores descriptor 2."""
    limiter = limiter if limiter is not None else LogLimiter(rate=1.0, burst=10.0)
    sys.stderr.flush()
    original = os.dup(2)  # put back by stop()
    python_stream = io.TextIOWrapper(
        io.FileIO(os.dup(2), "w"), encoding="utf-8", errors="replace", line_buffering=True
    )
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    previous = sys.stderr
    sys.stderr = python_stream
    _point_handlers(previous, python_stream)
    thread = threading.Thread(
        target=_pump, args=(read_end, limiter), name="native-stderr", daemon=True
    )
    thread.start()

    def stop() -> None:
        python_stream.flush()
        os.dup2(original, 2)  # the pipe's last write end closes: the pump sees its end
        os.close(original)
        thread.join(timeout=2)
        _point_handlers(python_stream, previous)
        sys.stderr = previous
        python_stream.close()

    return stop


def _point_handlers(old: object, new: io.TextIOBase | object) -> None:
    """Log handlers made before the capture write to the stream they were given."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)


def _pump(read_end: int, limiter: LogLimiter) -> None:
    """Read until every write end is closed; output arriving together is one line."""
    pending = b""
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], None if not pending else BURST_SECONDS)
            if not ready:  # a pause: the burst is over
                _emit(pending, limiter)
                pending = b""
                continue
            chunk = os.read(read_end, _READ_BYTES)
            if not chunk:
                break
            if len(pending) < _MAX_BURST_BYTES:  # the rest of a huge burst is dropped
                pending += chunk[: _MAX_BURST_BYTES - len(pending)]
    finally:
        if pending:
            _emit(pending, limiter)
        os.close(read_end)


def _emit(data: bytes, limiter: LogLimiter) -> None:
    text = data.decode("utf-8", errors="replace").strip()
    if not text:
        return
    left_out = limiter.allow("native_output", time.monotonic())
    if left_out is None:
        return
    first, _, rest = text.partition("\n")
    extra: dict[str, object] = {
        "event": "native_output",
        "lines": text.count("\n") + 1,
        "detail": rest[:MAX_TEXT],
    }
    if left_out:
        extra["suppressed"] = left_out
    log.warning("native code wrote: %s", first[:MAX_TEXT], extra=extra)
