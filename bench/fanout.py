"""Fan-out benchmark: one client pushes a change every 20 ms to a project the others watch.

``--clients`` clients (one user each; 200 by default, the issue's figure is 1,000) are
connected to one project and live (past ``synced``). One of them, the pusher, sends 500
pushes of one change each (an edit of one of 20 activities), on a fixed schedule of one every
``--interval-ms`` whatever the answers, as a user typing would. Every change and every push
frame is made before the clock starts.

Measured, on one clock (CLOCK_MONOTONIC, shared by every process on the machine):

- receive latency: from the moment the pusher sends a push to the moment each receiver's
  socket hands over the bytes of the ``changes`` frame holding it;
- ack latency: from the same send to the pusher's ``push_result``.

Each receiver also checks that it got every change exactly once, with consecutive seqs, in
push order. The receivers run in ``--client-processes`` processes (default 4; 0 puts them in
the pusher's process), on a lean WebSocket client (``lean_socket.py``) that decodes each
distinct frame once per process, so that a thousand of them cost less than the server does;
the pusher always has a process of its own. The server and PostgreSQL run as their own
processes.

With ``--workers N`` the server is N processes on one database, as ``fieldsync serve
--workers N`` runs it (each on its own port): the receivers are spread over them
round-robin, the pusher connects to the first, so the others learn of each commit by
PostgreSQL NOTIFY and read it from the log. Latency is also given per server process.
``--profile`` attaches py-spy to the last process (one that receives commits by NOTIFY
when there are several).

    python bench/fanout.py [--clients N] [--pushes N] [--interval-ms N] [--workers N]
                           [--client-processes N] [--profile PATH]

The last line is the headline: the p99 receive latency in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    CpuUse,
    EntityHistory,
    ServerProcess,
    ServerProfile,
    database,
    describe_ms,
    edit,
    entity_history,
    make_project,
    now_ns,
    open_client,
    percentile,
    reference_ids,
    seed,
    server_process,
    until_synced,
    user_system_seconds,
)
from lean_socket import LeanSocket
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import (
    Changes,
    EntityAccepted,
    EntityPush,
    Hello,
    ProjectCursor,
    Push,
    PushResult,
    Synced,
)

CLIENTS = 200
PUSHES = 500
INTERVAL_MS = 20.0
EDITED_ENTITIES = 20
CONNECT_CONCURRENCY = 20
# Receivers give up this long after the last scheduled push.
DRAIN_SECONDS = 15.0
RECEIVE_P99_TARGET_MS = 20.0  # issue 15, at 1,000 clients
ACK_P99_TARGET_MS = 30.0
SLOW_PUSH_MS = 50.0  # pushes slower than this are listed, to see whether stalls cluster
T = TypeVar("T")


@dataclass
class Received:
    """What one receiver saw: the receive time of each push (0: never), and any breakage."""

    times: list[int]
    server: int = 0  # which server process it was connected to
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0
    unknown: int = 0


class FrameIndex:
    """What each distinct ``changes`` frame holds, decoded once per process: every receiver
    gets the same bytes, so decoding them a thousand times would measure the receivers."""

    def __init__(self, changes: list[bytes]) -> None:
        self.index_of = {change: index for index, change in enumerate(changes)}
        self._frames: dict[bytes, tuple[tuple[int, int], ...]] = {}

    def records(self, frame: bytes) -> tuple[tuple[int, int], ...]:
        """(seq, push index or -1 for an unknown change) of each change; () for others."""
        known = self._frames.get(frame)
        if known is None:
            message = decode_server(frame)
            known = ()
            if isinstance(message, Changes):
                known = tuple(
                    (record.seq, self.index_of.get(record.change, -1)) for record in message.changes
                )
            self._frames[frame] = known
        return known


class Watch:
    """A connected, live receiver: checks each change as its frame arrives."""

    def __init__(self, socket: LeanSocket, cursor: int, index: FrameIndex, server: int) -> None:
        self.socket = socket
        self.seq = cursor
        self.expected_next = 0
        self.index = index
        self.received = Received([0] * len(index.index_of), server)
        self.missing = len(self.received.times)
        self.done = asyncio.get_running_loop().create_future()
        socket.on_message = self.on_message

    def on_message(self, frame: bytes, arrived: int) -> None:
        received = self.received
        times = received.times
        for seq, index in self.index.records(frame):
            if seq != self.seq + 1:
                received.gaps += 1
            self.seq = seq
            if index < 0:
                received.unknown += 1
                continue
            if times[index]:
                received.duplicates += 1
                continue
            if index != self.expected_next:
                received.out_of_order += 1
            self.expected_next = index + 1
            times[index] = arrived
            self.missing -= 1
            if not self.missing and not self.done.done():
                self.done.set_result(None)


async def connect_watchers(
    bases: list[str], project: uuid.UUID, tokens: list[tuple[int, str]], changes: list[bytes]
) -> list[Watch]:
    """Connect every token's client to the project, on the server process it is given
    (an index into ``bases``), and wait until each is live."""
    index = FrameIndex(changes)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    wanted = (ProjectCursor(str(project), None),)

    async def one(server: int, token: str) -> Watch:
        async with gate:
            socket = await LeanSocket.open(bases[server])
            socket.send(encode(Hello((1,), token, f"bench-{uuid.uuid4().hex[:12]}", wanted)))
            while True:
                message = decode_server(await socket.next_message())
                if isinstance(message, Synced) and message.project_id == str(project):
                    return Watch(socket, message.cursor, index, server)

    return list(await asyncio.gather(*(one(server, token) for server, token in tokens)))


async def watch(w: Watch, deadline: float) -> None:
    """Wait until every push arrived or the deadline (loop time) passes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await w.done


async def run_watchers(
    bases: list[str],
    project: uuid.UUID,
    tokens: list[tuple[int, str]],
    changes: list[bytes],
    ready: Any,
    go: EventType,
    schedule_seconds: float,
) -> tuple[list[Received], float]:
    """Connect, report ready, wait for the start, watch; the results and this process's CPU
    seconds while watching."""
    watchers = await connect_watchers(bases, project, tokens, changes)
    ready.put(len(watchers))
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    cpu = time.process_time()
    deadline = asyncio.get_running_loop().time() + schedule_seconds + DRAIN_SECONDS
    await asyncio.gather(*(watch(w, deadline) for w in watchers))
    cpu = time.process_time() - cpu
    for w in watchers:
        w.socket.close()
    await asyncio.sleep(0.5)
    return [w.received for w in watchers], cpu


def watcher_process(
    bases: list[str],
    project: str,
    tokens: list[tuple[int, str]],
    changes: list[bytes],
    ready: Any,
    go: EventType,
    results: Any,
    schedule_seconds: float,
) -> None:
    """A client process of receivers (the target of ``multiprocessing``)."""
    received, cpu = asyncio.run(
        run_watchers(bases, uuid.UUID(project), tokens, changes, ready, go, schedule_seconds)
    )
    results.put((received, cpu))


@dataclass
class Pusher:
    """The pushing client (a ``websockets`` client: it reads about 100 frames a second)."""

    ws: ClientConnection
    cursor: int
    index_of: dict[bytes, int]


async def connect_pusher(base: str, project: uuid.UUID, token: str, changes: list[bytes]) -> Pusher:
    ws = await open_client(base, token, (ProjectCursor(str(project), None),))
    cursor = await until_synced(ws, project)
    return Pusher(ws, cursor, {change: index for index, change in enumerate(changes)})


@dataclass
class PusherLog:
    sent: list[int]
    acked: list[int]
    rejected: int = 0
    echo: Received | None = None
    late_sends: list[float] = field(default_factory=list)


async def push_on_schedule(
    ws: ClientConnection, frames: list[bytes], interval: float, log: PusherLog
) -> None:
    """Send push ``i`` at start + i * interval, never waiting for answers (open loop)."""
    start = time.monotonic()
    for index, frame in enumerate(frames):
        delay = start + index * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            log.late_sends.append(-delay * 1000)
        log.sent[index] = now_ns()
        await ws.send(frame)


async def read_pusher(w: Pusher, log: PusherLog, deadline: float) -> None:
    """The pusher's own reader: push results, and its own changes coming back."""
    log.echo = Received([0] * len(log.sent))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await _read_pusher(w, log, log.echo)


async def _read_pusher(w: Pusher, log: PusherLog, echo: Received) -> None:
    echo_seq = w.cursor
    expected_next = 0
    pending = len(log.sent)
    while pending or not all(echo.times):
        frame = await w.ws.recv(decode=False)
        arrived = now_ns()
        message = decode_server(frame)
        if isinstance(message, PushResult):
            log.acked[message.push_id] = arrived
            pending -= 1
            if not all(isinstance(r, EntityAccepted) for r in message.results):
                log.rejected += 1
        elif isinstance(message, Changes):
            for record in message.changes:
                if record.seq != echo_seq + 1:
                    echo.gaps += 1
                echo_seq = record.seq
                index = w.index_of[record.change]
                if echo.times[index]:
                    echo.duplicates += 1
                elif index != expected_next:
                    echo.out_of_order += 1
                echo.times[index] = arrived
                expected_next = index + 1


def make_edits(count: int) -> tuple[list[EntityHistory], list[tuple[EntityHistory, bytes]]]:
    """The activities to edit (created before the run), and ``count`` edits of them."""
    refs = reference_ids()
    entities = [entity_history("activity", i, refs, 2) for i in range(EDITED_ENTITIES)]
    rng = random.Random(11)
    edits = []
    for n in range(count):
        entity = entities[n % len(entities)]
        edits.append((entity, edit(entity, 100 + n, rng)))  # the seed logs only .changes
    return entities, edits


FEED_SERIES = (
    "fieldsync_feed_log_reads_total",
    "fieldsync_commit_to_fanout_seconds_sum",
    "fieldsync_commit_to_fanout_seconds_count",
)


def feed_figures(base: str) -> str:
    """What one server process's metrics say of its feed: log reads, and the time from a
    commit known to it (local: committed there; remote: its pointer arrived) to its
    changes written or queued for every subscriber."""
    with urllib.request.urlopen(f"http://{base}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in FEED_SERIES:
                values[sample.name, sample.labels.get("source", "")] = sample.value
    reads = values.get(("fieldsync_feed_log_reads_total", ""))
    parts = ["feed log reads " + ("(not counted)" if reads is None else f"{reads:.0f}")]
    for source in ("local", "remote"):
        count = values.get(("fieldsync_commit_to_fanout_seconds_count", source), 0.0)
        total = values.get(("fieldsync_commit_to_fanout_seconds_sum", source), 0.0)
        if count:
            parts.append(
                f"{source} commit to fan-out done: {count:.0f}, mean {total / count * 1000:.1f} ms"
            )
    return "; ".join(parts)


def spread(items: list[T], parts: int) -> list[list[T]]:
    return [items[i::parts] for i in range(parts)]


async def measure(
    url: str, servers: list[ServerProcess], args: argparse.Namespace
) -> tuple[float, float]:
    bases = [server.base for server in servers]
    base = bases[0]  # the pusher's
    entities, edits = make_edits(args.pushes)
    team = await make_project(url, args.clients, "fanout")
    head = await seed(url, team.project_id, entities)
    changes = [change for _, change in edits]
    frames = [
        encode(
            Push(
                index,
                str(team.project_id),
                (EntityPush(entity.entity_type, entity.entity_id, (change,)),),
            )
        )
        for index, (entity, change) in enumerate(edits)
    ]
    interval = args.interval_ms / 1000
    schedule = len(frames) * interval
    pusher_token, *others = [m.token for m in team.members]
    # Receiver i on server i mod N; the first server has the pusher besides.
    tokens = [(i % len(bases), token) for i, token in enumerate(others)]

    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    workers = []
    local: list[Watch] = []
    if args.client_processes:
        for share in spread(tokens, args.client_processes):
            worker = context.Process(
                target=watcher_process,
                args=(bases, str(team.project_id), share, changes, ready, go, results, schedule),
                daemon=True,
            )
            worker.start()
            workers.append(worker)
    else:
        local = await connect_watchers(bases, team.project_id, tokens, changes)
    pusher = await connect_pusher(base, team.project_id, pusher_token, changes)
    connected = len(local) + 1
    for _ in workers:
        connected += await asyncio.get_running_loop().run_in_executor(None, ready.get, True, 120)
    assert connected == args.clients, connected
    print(
        f"{connected} clients live on one project at seq {head} on {len(servers)} server "
        f"process{'es' if len(servers) > 1 else ''} "
        f"({len(tokens)} receivers in {args.client_processes or 'the pusher'} "
        f"process{'es' if args.client_processes > 1 else ''}); {len(frames)} pushes of one "
        f"change, one every {args.interval_ms:g} ms"
    )

    log = PusherLog([0] * len(frames), [0] * len(frames))
    cpu = CpuUse([server.pid for server in servers], url)
    user, system = user_system_seconds([server.pid for server in servers])
    started = time.monotonic()
    with ServerProfile(servers[-1].pid, args.profile) as profile:
        go.set()
        deadline = asyncio.get_running_loop().time() + schedule + DRAIN_SECONDS
        await asyncio.gather(
            push_on_schedule(pusher.ws, frames, interval, log),
            read_pusher(pusher, log, deadline),
            *(watch(w, deadline) for w in local),
        )
    wall = time.monotonic() - started
    cpu.stop()
    user_end, system_end = user_system_seconds([server.pid for server in servers])
    split = (user_end - user, system_end - system)
    await pusher.ws.close()
    for w in local:
        w.socket.close()

    received = [w.received for w in local]
    client_cpu = []
    for _ in workers:
        batch, seconds = await asyncio.get_running_loop().run_in_executor(
            None, results.get, True, 120
        )
        received.extend(batch)
        client_cpu.append(seconds)
    for worker in workers:
        worker.join(30)

    receive_ms = []
    last_ms = [0.0] * len(frames)
    for r in received:
        for index, at in enumerate(r.times):
            if at:
                latency = (at - log.sent[index]) / 1e6
                receive_ms.append(latency)
                last_ms[index] = max(last_ms[index], latency)
    ack_ms = [(a - s) / 1e6 for s, a in zip(log.sent, log.acked, strict=True) if a]
    expected = len(received) * len(frames)
    complete = sum(
        all(r.times) and not (r.duplicates or r.out_of_order or r.gaps or r.unknown)
        for r in received
    )
    echo = log.echo
    echo_ok = (
        echo is not None
        and all(echo.times)
        and not (echo.duplicates or echo.out_of_order or echo.gaps)
    )
    send_span = (max(log.sent) - min(log.sent)) / 1e9
    print(
        f"sent {len(frames)} pushes in {send_span:.2f} s "
        f"({len(frames) / max(send_span, 1e-9):.0f}/s; {len(log.late_sends)} sends behind "
        f"schedule, worst {max(log.late_sends, default=0):.1f} ms); wall {wall:.1f} s"
    )
    print(f"receive latency, all receivers: {describe_ms(receive_ms)}")
    if len(servers) > 1:
        for server in range(len(servers)):
            own = [
                (at - log.sent[index]) / 1e6
                for r in received
                if r.server == server
                for index, at in enumerate(r.times)
                if at
            ]
            how = "the pusher's" if server == 0 else "by NOTIFY"
            print(f"receive latency, server process {server} ({how}): {describe_ms(own)}")
    print(f"receive latency, last receiver of each push: {describe_ms(last_ms)}")
    print(f"ack latency (push sent -> push_result): {describe_ms(ack_ms)}")
    first_sent = min(log.sent)
    slow = []
    for index in range(len(frames)):
        ack = (log.acked[index] - log.sent[index]) / 1e6 if log.acked[index] else float("inf")
        if max(ack, last_ms[index]) > SLOW_PUSH_MS:
            slow.append(
                f"#{index} at {(log.sent[index] - first_sent) / 1e9:.2f} s "
                f"(ack {ack:.0f} ms, last receiver {last_ms[index]:.0f} ms)"
            )
    if slow:
        print(f"pushes slower than {SLOW_PUSH_MS:g} ms: {len(slow)}: " + "; ".join(slow[:12]))
    print(
        f"delivery: {len(receive_ms)}/{expected} changes received; {complete}/{len(received)} "
        f"receivers got every change exactly once in order "
        f"(duplicates {sum(r.duplicates for r in received)}, out of order "
        f"{sum(r.out_of_order for r in received)}, seq gaps {sum(r.gaps for r in received)}); "
        f"pusher's own echo {'complete and in order' if echo_ok else 'BROKEN'}; "
        f"{len(ack_ms)}/{len(frames)} acks, {log.rejected} with a rejection"
    )
    print(cpu.describe(wall, client_cpu) + " (this process: the pusher)")
    print(
        f"server processes: user {split[0]:.2f} s, system {split[1]:.2f} s (the kernel's "
        f"share: sending on loopback runs the receiving side's TCP as well)"
    )
    deliveries = len(receive_ms) + (sum(1 for t in echo.times if t) if echo is not None else 0)
    print(
        f"server CPU per change delivered: {cpu.server / max(deliveries, 1) * 1e6:.1f} us "
        f"({deliveries} deliveries; pushes, commits and answers included)"
    )
    for number, process in enumerate(servers):
        print(f"server process {number}: {feed_figures(process.base)}")
    if args.profile is not None:
        print(profile.report())
    receive_p99 = percentile(receive_ms, 0.99) if len(receive_ms) == expected else float("inf")
    ack_p99 = percentile(ack_ms, 0.99) if len(ack_ms) == len(frames) else float("inf")
    misses = [
        name
        for name, value, target in (
            ("receive", receive_p99, RECEIVE_P99_TARGET_MS),
            ("ack", ack_p99, ACK_P99_TARGET_MS),
        )
        if not value < target
    ]
    if complete != len(received) or not echo_ok:
        misses.append("delivery")
    print(
        f"targets (receive p99 < {RECEIVE_P99_TARGET_MS:g} ms, ack p99 < {ACK_P99_TARGET_MS:g} ms, "
        "exactly once in order): " + ("met" if not misses else "MISSED: " + ", ".join(misses))
    )
    return receive_p99, ack_p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--pushes", type=int, default=PUSHES)
    parser.add_argument("--interval-ms", type=float, default=INTERVAL_MS)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes on one database (default 1)"
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output path")
    args = parser.parse_args()
    with database() as url, contextlib.ExitStack() as stack:
        servers = [stack.enter_context(server_process(url)) for _ in range(args.workers)]
        receive_p99, ack_p99 = asyncio.run(measure(url, servers, args))
    print(f"fanout p99: receive {receive_p99:.1f} ms, ack {ack_p99:.1f} ms")
    print(f"{receive_p99:.1f} ms")


if __name__ == "__main__":
    main()
