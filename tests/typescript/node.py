"""Running the TypeScript SDK (``client-sdk/typescript``) from the Python tests.

The package is compiled once per session (``tsc``, a few seconds) so that the tests always
run the sources as they are. Its npm dependencies must be installed (``npm ci`` in
``client-sdk/typescript``, which the README's test command does); without them the tests
fail and say so rather than skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "client-sdk" / "typescript"
DIST = PACKAGE / "dist"
_built = False
_bundled = False


def node() -> str:
    found = shutil.which("node")
    assert found is not None, "node (20 or newer) is needed for the TypeScript SDK tests"
    return found


async def run_script(script: Path, args: dict[str, Any], cwd: Path, within: float) -> Any:
    """Run a Node test script that takes its arguments as one JSON string and prints its
    findings as JSON on its last line; those findings (the script must succeed)."""
    process = await asyncio.create_subprocess_exec(
        node(),
        str(script),
        json.dumps(args),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode == 0, err.decode()[-6000:]
    return json.loads(out.decode().strip().splitlines()[-1])


CHROMIUM = Path("/usr/bin/chromium")


def chromium() -> str:
    """Debian's Chromium, which the browser test drives (the README's command installs it)."""
    assert CHROMIUM.exists(), "Chromium is needed: apt-get install -y chromium (see README)"
    return str(CHROMIUM)


def build() -> None:
    """Compile the package (sources and tests) into ``dist/``, once per session."""
    global _built
    if _built:
        return
    assert (PACKAGE / "node_modules" / "typescript").is_dir(), (
        "the TypeScript SDK's dependencies are missing: run `npm ci` in client-sdk/typescript"
    )
    tsc = PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"
    done = subprocess.run(
        [node(), str(tsc), "-p", str(PACKAGE)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _built = True


def bundle() -> None:
    """The browser bundles (``bundle/``, esbuild), once per session, after ``build``."""
    global _bundled
    if _bundled:
        return
    build()
    done = subprocess.run(
        [node(), str(PACKAGE / "scripts" / "bundle.mjs")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _bundled = True


def to_wire(value: Any) -> Any:
    """Python values as the driver's JSON: datetimes as ``{"$date": iso}``."""
    if isinstance(value, datetime):
        return {"$date": value.isoformat()}
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    return value


def from_wire(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$date"}:
            return datetime.fromisoformat(value["$date"].replace("Z", "+00:00"))
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


class DriverError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply['error']}: {reply['message']}")
        self.name: str = reply["error"]
        self.violations = reply.get("violations")


class TsClient:
    """One TypeScript SDK client in a Node process (``dist/test/driver.js``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls) -> TsClient:
        build()
        process = await asyncio.create_subprocess_exec(
            node(),
            str(DIST / "test" / "driver.js"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=PACKAGE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
            limit=64 * 1024 * 1024,
        )
        return cls(process)

    async def call(self, cmd: str, **args: Any) -> Any:
        """Run one driver command; its result, or DriverError (within 60 s)."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write((json.dumps({"cmd": cmd, **to_wire(args)}) + "\n").encode())
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if not line:
            stderr = await self.process.stderr.read() if self.process.stderr else b""
            raise AssertionError(f"the TypeScript driver died: {stderr.decode()[-2000:]}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise DriverError(reply)
        return from_wire(reply["result"])

    async def close(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
