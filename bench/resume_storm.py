"""The resume storm: thousands of clients holding cursors reconnect at once to a fresh server.

A server process (``fieldsync serve``) is started fresh, with nothing cached, over a few
projects whose logs already hold changes. ``--clients`` clients, spread over ``--processes``
client processes, each hold a cursor near the head of one project (most at the head, a
share ``--behind`` a few changes short of it) and, at one instant, all connect and resume
from their cursors: no snapshot. A refused upgrade (429/503) is retried after its
``Retry-After``, with the SDK's jitter (``fieldsync_client.backoff.Backoff``).

The clients speak the protocol over raw sockets (upgrade request, one masked ``hello``
frame, then read frames up to ``synced``): the SDK or the ``websockets`` client would spend
more CPU per connection than the server does, and share the machine's cores with it. Each
client connects from its own loopback address in 127.0.0.0/8, as clients behind many
addresses do (the server admits 64 unauthenticated connections per address).

Figures: time from the start until every client is live (and percentiles), the server
process's CPU (``/proc``) per resume over that window, refusals and retries, each client's
longest wait for an upgrade's answer (a busy server keeps an upgrade waiting for its turn;
the SDKs give up after 10 s), and the
latency of ``/healthz`` and ``/metrics`` probed every 250 ms during the storm, on the main
port and on the server's probe port (``serve --probe-port``, answered by a thread).

    .venv/bin/python bench/resume_storm.py [--clients 10000] [--processes 4] [--projects 4]
        [--workers N]

With ``--workers N`` the server is N fresh processes on one database, each on its own port as
``fieldsync serve --workers N`` runs them, and client process ``i`` connects to process
``i mod N`` (behind a balancer, each would get its share of the crowd); ``/healthz`` and
``/metrics`` are probed on the first.

The last line is the headline: seconds until all are live, server CPU ms per resume.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import random
import struct
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    CpuUse,
    ServerProfile,
    database,
    describe_ms,
    entity_history,
    loopback_address,
    make_project,
    now_ns,
    percentile,
    reference_ids,
    seed,
    server_process,
    user_system_seconds,
)

from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import Error, Hello, ProjectCursor, SnapshotBegin, Synced, Welcome
from fieldsync_client.backoff import Backoff

PER_USER = 4  # clients per user: several devices of one person, well under the cap of 16
GIVE_UP_SECONDS = 60.0
UPGRADE_TIMEOUT_SECONDS = 10.0  # the Python SDK's connect_timeout; the bench waits longer
PROBE_SECONDS = 0.25  # /metrics walks every connection's queue: probing costs the server


@dataclass(frozen=True)
class Client:
    token: str
    project: str
    cursor: int
    address: str


@dataclass
class Outcome:
    live_ns: int = 0  # when its synced arrived; 0: never
    cursor: int = -1  # the synced cursor
    attempts: int = 0
    refused: int = 0  # upgrades answered 429/503
    failed: int = 0  # connections that failed otherwise (reset, refused, error frame)
    snapshot: bool = False  # a snapshot was sent: the resume was not honoured
    errors: list[str] = field(default_factory=list)
    hints: list[float] = field(default_factory=list)  # the Retry-After of each refusal
    # The longest any attempt waited for the upgrade's answer (101 or a refusal), from its
    # request written: the SDKs give up on an upgrade after UPGRADE_TIMEOUT_SECONDS.
    longest_answer_ns: int = 0


def _masked_frame(payload: bytes) -> bytes:
    """A client's binary frame (masked, as clients must)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x82, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x82, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x82, 0x80 | 127, length)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


_CLOSE = b"\x88\x82" + b"\x00\x00\x00\x00" + struct.pack("!H", 1000)


class StormClient(asyncio.Protocol):
    """One client: upgrade, hello with its cursor, read frames up to ``synced``."""

    def __init__(self, request: bytes, hello: bytes, outcome: Outcome, done: asyncio.Future[str]):
        self._request = request
        self._hello = hello
        self._outcome = outcome
        self._done = done
        self._buffer = b""
        self._upgraded = False
        self._asked_ns = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._request)  # type: ignore[union-attr]
        self._asked_ns = now_ns()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            waited = now_ns() - self._asked_ns
            self._outcome.longest_answer_ns = max(self._outcome.longest_answer_ns, waited)
            status = head.split(b" ", 2)[1]
            if status != b"101":
                retry = 0.0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"retry-after:"):
                        retry = float(line.split(b":", 1)[1])
                self._finish(f"refused {status.decode()} {retry}")
                return
            self._upgraded = True
            assert self.transport is not None
            self.transport.write(self._hello)
        self._frames()

    def _frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            length = buffer[1] & 0x7F
            start = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length = struct.unpack_from("!H", buffer, 2)[0]
                start = 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length = struct.unpack_from("!Q", buffer, 2)[0]
                start = 10
            if len(buffer) < start + length:
                break
            payload = buffer[start : start + length]
            buffer = buffer[start + length :]
            if opcode == 0x8:
                self._finish("closed by the server")
                return
            if opcode != 0x2:
                continue
            message = decode_server(payload)
            if isinstance(message, SnapshotBegin):
                self._outcome.snapshot = True
            elif isinstance(message, Error):
                self._finish(f"error {message.code}: {message.message}")
                return
            elif isinstance(message, Synced):
                self._outcome.live_ns = now_ns()
                self._outcome.cursor = message.cursor
                self._finish("live")
                return
            elif not isinstance(message, Welcome):
                pass  # catch-up changes
        self._buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(f"connection lost: {exc}")

    def _finish(self, how: str) -> None:
        if not self._done.done():
            self._done.set_result(how)


def _returning(protocol: StormClient) -> Any:
    return lambda: protocol


async def resume(base: str, client: Client, outcome: Outcome, deadline: float) -> Any:
    """Connect until live (retrying refusals as the SDK does); the live transport."""
    loop = asyncio.get_running_loop()
    host, _, port = base.partition(":")
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /sync HTTP/1.1\r\nHost: {base}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    wanted = (ProjectCursor(client.project, client.cursor),)
    hello = _masked_frame(encode(Hello((1,), client.token, f"storm-{uuid.uuid4().hex}", wanted)))
    backoff = Backoff()
    while loop.time() < deadline:
        outcome.attempts += 1
        done: asyncio.Future[str] = loop.create_future()
        client_protocol = StormClient(request, hello, outcome, done)
        try:
            await loop.create_connection(
                _returning(client_protocol), host, int(port), local_addr=(client.address, 0)
            )
            how = await asyncio.wait_for(done, max(0.1, deadline - loop.time()))
        except (OSError, TimeoutError) as exc:
            how = f"connect failed: {exc!r}"
        if how == "live":
            return client_protocol.transport
        if client_protocol.transport is not None:
            client_protocol.transport.close()
        retry = 0.0
        if how.startswith("refused"):
            outcome.refused += 1
            retry = float(how.rsplit(" ", 1)[1])
            outcome.hints.append(retry)
        else:
            outcome.failed += 1
            outcome.errors.append(how)
        await asyncio.sleep(backoff.next_delay(retry))
    return None


async def storm(base: str, clients: list[Client], signals: Signals) -> list[Outcome]:
    """Resume every client from the agreed instant; report when all are live, and close
    them only when told (so closing costs the server nothing inside the measured window)."""
    loop = asyncio.get_running_loop()
    outcomes = [Outcome() for _ in clients]
    signals.ready.put(1)
    await loop.run_in_executor(None, signals.go.wait)
    await asyncio.sleep(max(0.0, (signals.start_ns.value - now_ns()) / 1e9))
    deadline = loop.time() + GIVE_UP_SECONDS
    transports = await asyncio.gather(
        *(resume(base, c, o, deadline) for c, o in zip(clients, outcomes, strict=True))
    )
    signals.ready.put(1)  # all live (or given up)
    await loop.run_in_executor(None, signals.close.wait)
    for transport in transports:
        if transport is not None:
            transport.write(_CLOSE)
            transport.close()
    await asyncio.sleep(0.5)
    return outcomes


@dataclass
class Signals:
    """Between the benchmark and its client processes."""

    ready: Any  # a Queue: one message per process when ready, one when all are live
    go: Any  # an Event: the start instant is set
    start_ns: Any  # a Value: the start instant (``now_ns``)
    close: Any  # an Event: the window is over, close the connections
    results: Any  # a Queue: each process's clients, outcomes and CPU seconds


def client_process(base: str, clients: list[Client], signals: Signals) -> None:
    """A client process (the target of ``multiprocessing``): its clients' outcomes."""
    cpu = time.process_time()
    outcomes = asyncio.run(storm(base, clients, signals))
    signals.results.put((clients, outcomes, time.process_time() - cpu))


def ended_by(log: Path) -> str:
    """How the server's connection lines say connections ended, most common first."""
    reasons: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") in ("connection_closed", "connection_refused"):
                reasons[str(record.get("ended_by"))[:80]] += 1 + int(record.get("suppressed", 0))
    return ", ".join(f"{n} {why}" for why, n in reasons.most_common(6))


class Probe(threading.Thread):
    """GETs ``/healthz`` and ``/metrics`` every ``PROBE_SECONDS`` (on the probe port too,
    when there is one); latencies (ms), failures."""

    def __init__(self, base: str, probe_base: str | None = None) -> None:
        super().__init__(daemon=True)
        self._urls = {"/healthz": f"http://{base}/healthz", "/metrics": f"http://{base}/metrics"}
        if probe_base is not None:
            self._urls["/healthz on the probe port"] = f"http://{probe_base}/healthz"
            self._urls["/metrics on the probe port"] = f"http://{probe_base}/metrics"
        self.stopping = threading.Event()
        self.latencies: dict[str, list[float]] = {name: [] for name in self._urls}
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            for name, url in self._urls.items():
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(url, timeout=5) as got:
                        got.read()
                    self.latencies[name].append((time.perf_counter() - started) * 1000)
                except Exception as exc:
                    self.failures.append(f"{name}: {exc!r}")
            self.stopping.wait(PROBE_SECONDS)


async def prepare(
    url: str, projects: int, clients: int, behind: float
) -> tuple[list[Client], dict[str, int]]:
    """The projects, their logs and members, and every client's token, project and cursor;
    the heads of the projects."""
    rng = random.Random(7)
    per_project = (clients + projects - 1) // projects
    made: list[Client] = []
    heads: dict[str, int] = {}
    for p in range(projects):
        team = await make_project(url, (per_project + PER_USER - 1) // PER_USER, f"storm{p}")
        refs = reference_ids()
        histories = [entity_history("location", p * 1000 + i, refs, 3) for i in range(60)]
        head = heads[str(team.project_id)] = await seed(url, team.project_id, histories)
        for i in range(min(per_project, clients - len(made))):
            cursor = head - rng.randint(1, 20) if rng.random() < behind else head
            index = len(made)
            address = loopback_address(index)
            member = team.members[i // PER_USER]
            made.append(Client(member.token, str(team.project_id), cursor, address))
    return made, heads


def run(url: str, args: argparse.Namespace) -> None:
    clients, heads = asyncio.run(prepare(url, args.projects, args.clients, args.behind))
    context = multiprocessing.get_context("spawn")
    signals = Signals(
        context.Queue(), context.Event(), context.Value("q", 0), context.Event(), context.Queue()
    )
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(server_process(url, probes=True)) for _ in range(args.workers)
        ]
        server, pids = servers[0], [s.pid for s in servers]
        workers = [
            context.Process(
                target=client_process,
                args=(servers[i % len(servers)].base, clients[i :: args.processes], signals),
                daemon=True,
            )
            for i in range(args.processes)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            signals.ready.get(timeout=120)
        probe = Probe(server.base, server.probe_base)
        profile = ServerProfile(server.pid, args.profile)
        with profile:  # attaching takes a second
            start_ns = signals.start_ns.value = now_ns() + int(0.3e9)
            signals.go.set()
            time.sleep(max(0.0, (start_ns - now_ns()) / 1e9))
            cpu = CpuUse(pids, url)
            user, system = user_system_seconds(pids)
            probe.start()
            for _ in workers:
                signals.ready.get(timeout=GIVE_UP_SECONDS + 60)
            cpu.stop()
            user_end, system_end = user_system_seconds(pids)
            user, system = user_end - user, system_end - system
            probe.stopping.set()
        signals.close.set()
        gathered = [signals.results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join()
        probe.join()
        pairs = [(c, o) for sent, got, _ in gathered for c, o in zip(sent, got, strict=True)]
        if any(not o.live_ns for _, o in pairs):
            for each in servers:
                print("why the server ended connections:", ended_by(each.log_path))
        outcomes = [o for _, o in pairs]
        last_live = max((o.live_ns for o in outcomes), default=0)
    live = [o for o in outcomes if o.live_ns]
    wall = (last_live - start_ns) / 1e9 if live else float("nan")
    # Every client ends live at its project's head (nothing is pushed during the storm).
    wrong = [o for c, o in pairs if o.live_ns and o.cursor != heads[c.project]]
    print(
        f"{len(clients)} clients over {args.projects} projects, {args.processes} client "
        f"processes, {args.behind:.0%} a few changes behind the head"
    )
    print(
        f"live: {len(live)}/{len(clients)}; snapshots sent: {sum(o.snapshot for o in outcomes)}; "
        f"upgrades refused (retried after Retry-After): {sum(o.refused for o in outcomes)}; "
        f"other failures: {sum(o.failed for o in outcomes)}; synced short of the head: {len(wrong)}"
    )
    hints = [h for o in outcomes for h in o.hints]
    if hints:
        refused = [(o.live_ns - start_ns) / 1e6 for o in live if o.refused]
        print(
            f"Retry-After hints: p50 {percentile(hints, 0.5):g} s, max {max(hints):g} s; "
            f"most refusals of one client {max(o.refused for o in outcomes)}; "
            f"time to live of refused clients: {describe_ms(refused)}"
        )
    failures = Counter(e.split(":")[0][:60] for o in outcomes for e in o.errors)
    if failures:
        print("client failures:", ", ".join(f"{n} {why}" for why, n in failures.most_common(6)))
    to_live = [(o.live_ns - start_ns) / 1e6 for o in live]
    print(f"time to live: {describe_ms(to_live)}")
    answers = [o.longest_answer_ns / 1e6 for o in outcomes if o.longest_answer_ns]
    late = sum(a > UPGRADE_TIMEOUT_SECONDS * 1000 for a in answers)
    print(
        f"longest wait of each client for an upgrade's answer: {describe_ms(answers)}; "
        f"over the SDKs' {UPGRADE_TIMEOUT_SECONDS:g} s: {late}"
    )
    print(cpu.describe(wall, [cpu for _, _, cpu in gathered]))
    print(
        f"server process{'es' if len(pids) > 1 else ''}: user {user:.2f} s, system {system:.2f} s"
    )
    for path, latencies in probe.latencies.items():
        print(f"{path} during the storm: {describe_ms(latencies)}")
    if probe.failures:
        print(f"probe failures: {len(probe.failures)}, first: {probe.failures[0]}")
    per_resume_ms = cpu.server / max(1, len(live)) * 1000
    if args.profile is not None:
        print(profile.report())
    print(f"server CPU per resume: {per_resume_ms:.3f} ms")
    print(f"p99 time to live {percentile(to_live, 0.99) / 1000:.2f} s")
    print(f"all {len(live)} live in {wall:.2f} s, server CPU {per_resume_ms:.3f} ms per resume")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--projects", type=int, default=4)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on one database, as `serve --workers N` runs them (default 1); "
        "the client processes are spread over them",
    )
    parser.add_argument(
        "--behind", type=float, default=0.3, help="share of clients a few changes behind"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the server into this file"
    )
    args = parser.parse_args()
    with database() as url:
        run(url, args)


if __name__ == "__main__":
    main()
