"""Soak run of the determinism properties: the CI suite's property tests with many more examples.

CI runs each property with a modest number of examples (see ``docs/conflicts.md``); this runs
the same tests with ``--examples`` (default 1,000) for the pure properties and the real-store
determinism test, and ``--machine-runs`` (default 100) runs of the state machine of SDK
clients and server restarts. It prints each group's outcome and time; the last line says
whether everything passed, with the counts.

    .venv/bin/python bench/soak.py [--examples N] [--machine-runs M]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GROUPS = (
    ("pure conflict properties", ["tests/conflict"], "CONFLICT_EXAMPLES"),
    ("real-store delivery orders", ["tests/store/test_determinism.py"], "CONFLICT_EXAMPLES"),
    (
        "SDK and server state machine",
        ["tests/client/test_stateful_sync.py"],
        "SYNC_MACHINE_EXAMPLES",
    ),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--machine-runs", type=int, default=100)
    args = parser.parse_args()
    failed = False
    started_all = time.monotonic()
    for name, paths, variable in GROUPS:
        count = args.machine_runs if variable == "SYNC_MACHINE_EXAMPLES" else args.examples
        env = {**os.environ, variable: str(count)}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"{name}: {count} examples per property, {elapsed:.0f} s: {summary}")
        if done.returncode != 0:
            failed = True
            print(done.stdout[-4000:], file=sys.stderr)
    elapsed_all = time.monotonic() - started_all
    print(
        "soak FAILED"
        if failed
        else f"soak passed: {args.examples} examples per property, "
        f"{args.machine_runs} machine runs, {elapsed_all:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
