"""How many connections a process may hold: its open-file limit, less what it needs besides.

Every connection is a file descriptor. Past the process's limit ``accept()`` fails with
EMFILE, and asyncio (Python 3.11) then goes on trying to accept as many times as the listen
backlog (16,384 here) in the same turn, logging every failure with its traceback and arming
a retry timer for each. A storm of 20,000 clients against a limit of 20,000 spent a sixth of
the process's CPU logging those failures; the probes timed out and every client waited 47 s
to go live. So a serving process raises its soft limit to the hard one as it starts, and
closes a new connection at once, before reading it, while it holds as many connections as
the limit allows less a reserve (database connections, listeners, files being served, the
probe port): ``accept()`` then does not fail, and a client that finds the process full
retries with its backoff.
"""

from __future__ import annotations

import resource

# Descriptors kept for what is not a client connection, within these bounds: the pool and
# its listeners, blob files being read or written, logs, the probe port's threads.
MIN_RESERVE = 128
MAX_RESERVE = 4_096
CONNECTION_CAP_REASON = "connection_cap"  # a connection closed at once: the process is full

# What an unlimited limit stands for: Linux's own ceiling on one process's descriptors
# (``fs.nr_open``, 1,048,576 by default).
UNLIMITED = 1 << 20


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft  # not allowed here: the soft limit stands
    return hard


def open_file_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return UNLIMITED if soft == resource.RLIM_INFINITY else soft


def connection_cap(open_files: int) -> int:
    """How many connections a process with ``open_files`` descriptors may hold at once."""
    reserve = min(MAX_RESERVE, max(MIN_RESERVE, open_files // 20))
    return max(1, open_files - reserve)
