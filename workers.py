"""``fieldsync serve --workers N``: N server processes on ports PORT..PORT+N-1, one database.

Why separate ports and not one shared socket: each process is a peer behind the load
balancer (``deploy/nginx.conf``) with its own ``/healthz`` (the balancer takes out a process
that cannot serve) and its own ``/metrics`` (a scrape of a shared port would hit a random
process). The processes share nothing but the database, which is started once by this
parent (embedded PostgreSQL) or given by URL; they learn of each other's commits through
PostgreSQL NOTIFY and the periodic head check.

The parent migrates once, starts the workers in sessions of their own (so Ctrl-C in a
terminal reaches only the parent), and forwards SIGINT or SIGTERM to each of them once; a
worker that dies later is started again. A worker that exits within its first seconds is a
start-up failure (a port in use, say): then all stop and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("fieldsync.workers")

STARTUP_SECONDS = 5.0
RESTART_DELAY = 1.0
STOP_SECONDS = 40.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    host: str
    first_port: int
    count: int
    data_dir: Path
    log_format: str
    slow_ms: float
    options: tuple[str, ...] = ()  # token and Origin options, passed on as given
    first_probe_port: int | None = None  # the workers' probe ports follow their ports

    def ports(self) -> list[int]:
        return [self.first_port + i for i in range(self.count)]

    def command(self, port: int) -> list[str]:
        """One worker: ``fieldsync serve`` on ``port``; the URL goes in the environment."""
        probes: list[str] = []
        if self.first_probe_port is not None:
            probes = ["--probe-port", str(self.first_probe_port + port - self.first_port)]
        return [
            sys.executable, "-m", "fieldsync.cli", "serve", "--worker",
            "--host", self.host, "--port", str(port),
            "--data-dir", str(self.data_dir),
            "--log-format", self.log_format, "--slow-ms", f"{self.slow_ms:g}",
            *probes, *self.options,
        ]  # fmt: skip


@dataclass
class _Worker:
    port: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


def _own_session_dying_with_parent() -> None:
    """In the worker before it runs: a session of its own (a terminal's Ctrl-C reaches only
    the parent, which forwards it once), and on Linux SIGTERM when the parent dies, so a
    killed parent leaves no workers behind."""
    os.setsid()
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(plan: WorkerPlan, port: int, environ: dict[str, str]) -> _Worker:
    process = subprocess.Popen(
        plan.command(port), env=environ, preexec_fn=_own_session_dying_with_parent
    )
    log.info(
        "worker on port %d started (pid %d)", port, process.pid,
        extra={"event": "worker_started", "port": port, "worker_pid": process.pid},
    )  # fmt: skip
    return _Worker(port, process)


async def run_workers(plan: WorkerPlan, database_url: str) -> int:
    """Serve with ``plan.count`` processes until SIGINT or SIGTERM; the exit status."""
    environ = {**os.environ, "DATABASE_URL": database_url}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    workers = [_start(plan, port, environ) for port in plan.ports()]
    failed = False
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.2)
            for index, worker in enumerate(workers):
                code = worker.process.poll()
                if code is None or stopping.is_set():
                    continue
                if time.monotonic() - worker.started < STARTUP_SECONDS:
                    log.error(
                        "worker on port %d exited with %d while starting", worker.port, code,
                        extra={"event": "worker_failed", "port": worker.port},
                    )  # fmt: skip
                    failed = True
                    stopping.set()
                    break
                log.error(
                    "worker on port %d exited with %d; starting it again", worker.port, code,
                    extra={"event": "worker_died", "port": worker.port},
                )  # fmt: skip
                await asyncio.sleep(RESTART_DELAY)
                workers[index] = _start(plan, worker.port, environ)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        codes = await asyncio.to_thread(_stop_all, [w.process for w in workers])
    log.info("workers stopped", extra={"event": "workers_stopped", "exit_codes": str(codes)})
    return 1 if failed else 0


def _stop_all(processes: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM to each running worker (a graceful shutdown), SIGKILL after STOP_SECONDS."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
    return codes
