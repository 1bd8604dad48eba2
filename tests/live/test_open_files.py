"""The connections a process may hold, from its open-file limit (``live.open_files``)."""

from __future__ import annotations

import subprocess
import sys

from fieldsync.live.open_files import MAX_RESERVE, MIN_RESERVE, UNLIMITED, connection_cap


def test_the_cap_keeps_a_reserve_for_what_is_not_a_connection() -> None:
    assert connection_cap(1_024) == 1_024 - MIN_RESERVE
    assert connection_cap(20_000) == 19_000  # a twentieth kept
    assert connection_cap(UNLIMITED) == UNLIMITED - MAX_RESERVE
    assert connection_cap(100) == 1  # a tiny limit still lets one in


def test_a_serving_process_raises_its_soft_limit_to_the_hard_one() -> None:
    script = (
        "import resource\n"
        "from fieldsync.live.open_files import raise_open_file_limit, open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "assert open_file_limit() == 256\n"
        "print(raise_open_file_limit() == hard == open_file_limit())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "True"
