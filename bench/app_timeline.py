"""The lead's timeline on a project of 10,000 activities, in headless Chromium, run by hand.

The project has 10,000 activities over a year at 25 locations (and a lead). A fresh browser
context opens the app's sign-in link, which bootstraps the project into IndexedDB (timed for
reference); then the timeline screen is loaded again, as a lead opens it later, and its
first render is timed from the navigation's start until its first frame: loading the app,
reading every activity from IndexedDB, laying them out and drawing the bars in view.
Target: 2 s.

    npm ci --prefix client-sdk/typescript && npm ci --prefix app   # once
    python bench/app_timeline.py [--activities N] [--runs N]

The last line is the headline: the median first render, in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import EntityHistory, database, make_project, seed, server_process

from fieldsync.model.writer import create_entity
from tests.app.build import APP, build_app
from tests.typescript.node import chromium, node

START = datetime(2027, 1, 4, tzinfo=UTC)
STATUSES = ("planned", "confirmed", "in_progress", "done")


def project_entities(activities: int, locations: int) -> list[EntityHistory]:
    """A plan, its locations, and ``activities`` activities spread over a year."""
    made: list[EntityHistory] = []

    def add(entity_type: str, values: dict[str, object]) -> str:
        entity_id = str(uuid.uuid4())
        document, change = create_entity(entity_type, values)
        made.append(EntityHistory(entity_type, entity_id, document, [change]))
        return entity_id

    plan = add("plan", {"name": "A year in the field"})
    places = [add("location", {"name": f"Site {i + 1:02d}"}) for i in range(locations)]
    for i in range(activities):
        starts = START + timedelta(hours=(i * 7919) % (365 * 24))
        add(
            "activity",
            {
                "plan_id": plan,
                "title": f"Survey {i + 1}",
                "location_id": places[i % locations],
                "starts_at": starts,
                "ends_at": starts + timedelta(hours=2 + i % 6),
                "status": STATUSES[i % len(STATUSES)],
            },
        )
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activities", type=int, default=10_000)
    parser.add_argument("--locations", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    build_app()
    with database() as url:
        team = asyncio.run(make_project(url, 1, "timeline bench"))
        head = asyncio.run(
            seed(url, team.project_id, project_entities(args.activities, args.locations))
        )
        print(f"{args.activities} activities at {args.locations} locations (log head {head})")
        with server_process(url) as server:
            done = subprocess.run(
                [
                    node(),
                    str(APP / "test-dist" / "timeline-bench.js"),
                    json.dumps(
                        {
                            "base": server.base,
                            "token": team.members[0].token,
                            "project": str(team.project_id),
                            "chromium": chromium(),
                            "runs": args.runs,
                        }
                    ),
                ],
                capture_output=True,
                text=True,
                timeout=900,
                cwd=APP,
            )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["activities"] >= args.activities, seen
    print(f"bootstrap into IndexedDB (first sign-in): {seen['bootstrapMs'] / 1000:.2f} s")
    renders = [ms / 1000 for ms in seen["renders"]]
    print("timeline first render after bootstrap: " + ", ".join(f"{s:.2f} s" for s in renders))
    print(f"{statistics.median(renders):.2f} s")


if __name__ == "__main__":
    main()
