"""Rust panics in the binding become JSON log lines, a few per burst, never raw text.

Runs in a subprocess: the capture takes over the process's file descriptor 2, which pytest
itself captures in this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

SCRIPT = r"""
import time
from automerge.core import Document
from fieldsync.observability.logs import configure_logging
from fieldsync.observability.native_output import capture_native_output
from tests.model.automerge_format.test_op_columns import _put, _with_unknown_value_type
from automerge.core import ROOT, ScalarType

configure_logging("json")
stop = capture_native_output()
poisoned = Document.load(_with_unknown_value_type(_put("title", ScalarType.Str, "abcdefg")))
for round in range(3):
    for _ in range(10):  # ten panics close together: one burst
        try:
            poisoned.get(ROOT, "title")
        except BaseException:
            pass
    time.sleep(0.3)
import logging
logging.getLogger("after").info("still logging")
stop()
"""


def test_panics_become_a_few_json_lines() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env={**os.environ, "RUST_BACKTRACE": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    native = [r for r in records if r.get("event") == "native_output"]
    assert 1 <= len(native) <= 6, lines  # one per burst, not one per panic or per line
    assert all("panicked" in r["message"] for r in native)
    assert any(r["lines"] > 10 for r in native)  # the backtrace is folded into the line
    assert records[-1]["message"] == "still logging"
