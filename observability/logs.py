"""Structured logs: one JSON object per line, with the ids of the request and connection.

``bind`` puts fields (``request_id``, ``connection_id``) into a context variable; asyncio
copies it into every task started under it, so each line logged while a connection is
served names that connection without the code passing ids around. Fields given as
``extra=`` (``event``, ``duration_ms``, ``project_id``, ...) become keys of the line.

What never reaches a log line: tokens and document contents. Nothing here logs a message's
fields; as a second guard the formatter replaces anything shaped like a JWT, and bytes
values in ``extra`` are logged as their length only.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("json", "text")
_context: ContextVar[dict[str, str] | None] = ContextVar("fieldsync_log_context", default=None)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class Binding:
    """The block of one ``bind``: a plain object rather than a generator, since every open
    connection holds one for its whole life."""

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields
        self._token: Token[dict[str, str] | None] | None = None

    def __enter__(self) -> None:
        self._token = _context.set({**(_context.get() or {}), **self._fields})

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _context.reset(self._token)
            self._token = None


def bind(**fields: str) -> Binding:
    """Add ``fields`` to every line logged inside this block (and tasks started in it)."""
    return Binding(fields)


def annotate(**fields: str | None) -> None:
    """Add ``fields`` to the binding in force (made by ``bind``), in place: lines logged
    from now on by this connection's tasks, including tasks started before, carry them.
    Does nothing outside a ``bind`` block. None values are left out."""
    current = _context.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def redact(text: str) -> str:
    return _JWT.sub("<token>", text)


def _value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The line for ``record``: time, level, logger, message, context, extras, exception."""
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "pid": record.process,
        "message": redact(record.getMessage()),
    }
    fields.update(_context.get() or {})
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = _value(value)
    if record.exc_info:
        fields["exception"] = redact(logging.Formatter().formatException(record.exc_info))
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record), default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``, for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        head = f"{fields.pop('time')} {fields.pop('level').upper()} {fields.pop('logger')}: "
        exception = fields.pop("exception", None)
        line = head + str(fields.pop("message"))
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line + ("\n" + exception if exception else "")


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    """Send every logger's records to stderr, one line per event, in ``log_format``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # No line shows where in the source it was logged, nor the thread: not looking those up
    # takes about a fifth off each line (the logging module's own switches for this).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # pgserver narrates every step of starting PostgreSQL at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
