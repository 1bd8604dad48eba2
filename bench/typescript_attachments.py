"""Attachments in the TypeScript SDK (Node, SQLite), run by hand.

A ``fieldsync serve`` process (blobs under its data directory) and one TypeScript client:
the client attaches N distinct photos of about 3 MB while paused (offline), timing each
``attach`` (SHA-256, one SQLite write of the bytes, the upload row and the edit), then
resumes and is timed until the server holds every photo (``uploaded``), sent in the SDK's
1 MiB parts, one photo at a time. Last line: the upload rate.

    npm ci --prefix client-sdk/typescript   # once
    .venv/bin/python bench/typescript_attachments.py [--photos 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attachments import photos
from harness import database, make_project, server_process

from tests.typescript.node import TsClient

ON_SERVER = ["uploaded", "processing", "ready"]


async def measure(url: str, base: str, count: int) -> None:
    team = await make_project(url, 1, "ts-attachments")
    data = photos(count)
    total = sum(len(d) for d in data)
    store = Path(tempfile.mkdtemp(prefix="fsta")) / "ts.db"
    ts = await TsClient.start()
    try:
        await ts.call(
            "open", url=f"http://{base}", token=team.members[0].token, path=str(store),
            project=str(team.project_id),
        )  # fmt: skip
        start = datetime(2027, 6, 1, 8, tzinfo=UTC)
        activity = await ts.call(
            "create", type="activity",
            values={"plan_id": "plan-1", "title": "Photos", "starts_at": start,
                    "ends_at": start + timedelta(hours=2), "status": "planned"},
        )  # fmt: skip
        await ts.call("waitSynced")
        await ts.call("pause")
        attached = []
        for photo in data:
            encoded = base64.b64encode(photo).decode()
            attached.append(
                await ts.call("attachTimed", type="activity", id=activity, data=encoded)
            )
        ms = [a["ms"] for a in attached]
        for a in attached:
            status = await ts.call("attachmentStatus", id=a["attachmentId"])
            assert status["status"] == "local", f"sent while paused: {status}"
        began = time.perf_counter()
        await ts.call("resume")
        for a in attached:
            await ts.call(
                "waitAttachment", id=a["attachmentId"], status=ON_SERVER, timeoutMs=600_000
            )
        seconds = time.perf_counter() - began
    finally:
        await ts.close()
    print(f"photos: {count} of {total / count / 1e6:.2f} MB, attached offline then uploaded")
    print(
        f"attach (SHA-256 + one SQLite write): median {statistics.median(ms):.1f} ms,"
        f" max {max(ms):.1f} ms"
    )
    print(f"upload: {seconds:.2f} s, {count / seconds:.1f} photos/s")
    print(f"TypeScript SDK upload of {count} x 3 MB photos in 1 MiB parts: "
          f"{total / seconds / 1e6:.1f} MB/s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=20)
    args = parser.parse_args()
    with database() as url, server_process(url) as server:
        asyncio.run(measure(url, server.base, args.photos))


if __name__ == "__main__":
    main()
