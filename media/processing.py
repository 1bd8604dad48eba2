"""Running the decoder in a process of its own, bounded in time and memory.

The outcome is one of three: the outputs (``Decoded``), a permanent failure (the file is
not a decodable image: ``UndecodableError`` with the decoder's reason), or a transient one (the
process crashed, ran out of memory or time: ``DecodeCrashedError``), which the caller retries a
bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fieldsync.media.limits import AttachmentLimits

UNDECODABLE = 2


class UndecodableError(Exception):
    """The decoder read the file and refused it; the message says why."""


class DecodeCrashedError(Exception):
    """The decoder did not finish (killed, crashed, out of time or memory)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    width: int
    height: int
    location_removed: bool
    outputs: dict[str, bytes]  # "small", "large", "shared"


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


async def decode(data: bytes, keep_location: bool, limits: AttachmentLimits) -> Decoded:
    """Thumbnails and the shared copy of an image, made by a child process."""
    with tempfile.TemporaryDirectory(prefix="fs-decode-") as work:
        source = Path(work) / "input"
        source.write_bytes(data)
        out = Path(work) / "out"
        out.mkdir()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fieldsync.media.decode",
            str(source), str(out), "1" if keep_location else "0", str(limits.max_image_pixels),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: _limit_memory(limits.decode_memory_bytes),
        )  # fmt: skip
        try:
            stdout, stderr = await asyncio.wait_for(
                process.communicate(), timeout=limits.decode_seconds
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise DecodeCrashedError(
                f"decoding took longer than {limits.decode_seconds:g} s"
            ) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        reason = stderr.decode("utf-8", "replace").strip().splitlines()
        if process.returncode == UNDECODABLE:
            raise UndecodableError(reason[-1] if reason else "undecodable image")
        if process.returncode != 0:
            raise DecodeCrashedError(
                f"the decoder exited with status {process.returncode}"
                + (f": {reason[-1][:200]}" if reason else "")
            )
        result = json.loads(stdout)
        outputs = {name: (out / f"{name}.jpg").read_bytes() for name in ("small", "large")}
        outputs["shared"] = (out / "shared").read_bytes()
        return Decoded(
            int(result["width"]), int(result["height"]), bool(result["location_removed"]), outputs
        )
