"""The metrics of one server process, in a registry of its own, served at ``GET /metrics``.

Every metric is defined here, once. The code that does the work calls one small method per
event (``received``, ``push_committed``, ``appended``, ...), so instrumenting a module adds a
line, not a structure. Each ``Metrics`` owns its registry: several apps in one process (the
tests' "processes") never collide, and nothing is global.

Label values come only from this code's own vocabularies (message types, reject and error
codes, conflict kinds), never from what a client sent, so no client can grow the number of
series.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Protocol
from uuid import UUID

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fieldsync.observability.fanout import LOCAL, REMOTE, FanoutClock
from fieldsync.store.records import AppendResult, Rejected, ReplicaReport
from fieldsync.sync.messages import Hello, Push

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("fieldsync.slow")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BYTES_BUCKETS = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
_QUEUE_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_AGE_BUCKETS = (1, 10, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600)


class PoolLike(Protocol):
    """What the pool gauges read (asyncpg.Pool has these)."""

    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...


_REASON_WORD = re.compile(r"[a-z_]{1,40}")


def _reason_label(reason: str) -> str:
    """The code word a reason starts with ("invalid_token: …" -> "invalid_token"): labels
    must come from a small set, never from what a client wrote."""
    found = _REASON_WORD.match(reason)
    return found.group(0) if found else "other"


class SendQueue(Sized, Protocol):
    """What the send-queue metrics read of a connection's queue (``live.outbox.Outbox``)."""

    @property
    def queued_bytes(self) -> int: ...


class SendQueues(Collector):
    """The connections' send queues: a histogram of a queue's depth whenever a live frame is
    queued, and at scrape time the total and the deepest queue, over the queues that have
    held frames since the last scrape (the others are empty).

    The histogram is observed once per live frame and subscriber, so it is kept in plain
    counts (the event loop's thread alone observes) and only turned into a metric when
    scraped: a prometheus ``Histogram`` takes a lock for each observation."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._queues: weakref.WeakSet[SendQueue] = weakref.WeakSet()
        self._bucket_counts = [0] * (len(_QUEUE_BUCKETS) + 1)  # the last one: +Inf
        self._depth_sum = 0
        registry.register(self)

    def backlogged(self, queue: SendQueue) -> None:
        """Frames started to wait in ``queue``: it counts until a scrape finds it empty."""
        self._queues.add(queue)

    def observe(self, depth: int) -> None:
        self._bucket_counts[bisect_left(_QUEUE_BUCKETS, depth)] += 1
        self._depth_sum += depth

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        bounds = [str(float(bound)) for bound in _QUEUE_BUCKETS] + ["+Inf"]
        for bound, count in zip(bounds, self._bucket_counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "fieldsync_send_queue_depth",
            "Frames already waiting in a connection's send queue when a live frame is queued",
            buckets=buckets,
            sum_value=self._depth_sum,
        )
        # Only queues that have held frames since the last scrape: an idle connection's is
        # empty and never looked at, so a scrape costs nothing per idle socket.
        queues = [queue for queue in list(self._queues) if len(queue)]
        self._queues = weakref.WeakSet(queues)
        depths = [len(queue) for queue in queues]
        sizes = [queue.queued_bytes for queue in queues]
        yield GaugeMetricFamily(
            "fieldsync_send_queue_frames", "Frames waiting in all send queues", sum(depths)
        )
        yield GaugeMetricFamily(
            "fieldsync_send_queue_max_frames",
            "Frames waiting in the deepest send queue",
            max(depths, default=0),
        )
        yield GaugeMetricFamily(
            "fieldsync_send_queue_bytes", "Bytes waiting in all send queues", sum(sizes)
        )
        yield GaugeMetricFamily(
            "fieldsync_send_queue_max_bytes",
            "Bytes waiting in the fullest send queue",
            max(sizes, default=0),
        )


class _SentMessages(Collector):
    """``fieldsync_messages_sent_total`` and ``fieldsync_sent_bytes_total`` by message type,
    kept in plain ints (counted from the event loop's thread only) and read when scraped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._by_kind: dict[str, list[int]] = {}  # type -> [messages, bytes]
        registry.register(self)

    def add(self, kind: str, size: int) -> None:
        tally = self._by_kind.get(kind)
        if tally is None:
            tally = self._by_kind[kind] = [0, 0]
        tally[0] += 1
        tally[1] += size

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "fieldsync_messages_sent", "Protocol messages sent, by type", labels=["type"]
        )
        sizes = CounterMetricFamily(
            "fieldsync_sent_bytes", "Bytes of protocol messages sent, by type", labels=["type"]
        )
        for kind, (count, size) in list(self._by_kind.items()):
            messages.add_metric([kind], count)
            sizes.add_metric([kind], size)
        yield messages
        yield sizes


class _PlainCounts(Collector):
    """A counter by one label, kept as a plain int per value (counted from the event loop's
    thread only) and read when scraped: for counts bumped on every client message or
    connection, where a labelled Prometheus counter costs a lookup and a lock each time."""

    def __init__(self, registry: CollectorRegistry, name: str, documentation: str, label: str):
        self._name = name
        self._documentation = documentation
        self._label = label
        self._counts: dict[str, int] = {}
        registry.register(self)

    def add(self, value: str) -> None:
        self._counts[value] = self._counts.get(value, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, count in list(self._counts.items()):
            family.add_metric([value], count)
        yield family


class _PoolCollector(Collector):
    def __init__(self, pool: PoolLike) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size, idle = self._pool.get_size(), self._pool.get_idle_size()
        used = GaugeMetricFamily(
            "fieldsync_db_pool_connections", "Database pool connections", labels=["state"]
        )
        used.add_metric(["in_use"], size - idle)
        used.add_metric(["idle"], idle)
        yield used
        yield GaugeMetricFamily(
            "fieldsync_db_pool_max_connections",
            "Most connections the pool opens",
            self._pool.get_max_size(),
        )


class ReplicaLike(Protocol):
    """What the read-replica metrics read (``store.ports.ReplicaGauges``)."""

    def report(self) -> ReplicaReport: ...


class _ReplicaCollector(Collector):
    """Reads routed to a read replica or to the primary, fallbacks by reason, replay lag."""

    def __init__(self, replica: ReplicaLike) -> None:
        self._replica = replica

    def collect(self) -> Iterator[Metric]:
        report = self._replica.report()
        reads = CounterMetricFamily(
            "fieldsync_replica_reads",
            "Snapshot and catch-up reads, by where they were served",
            labels=["read", "served_by"],
        )
        for (read, served_by), count in sorted(report.reads.items()):
            reads.add_metric([read, served_by], count)
        yield reads
        fallbacks = CounterMetricFamily(
            "fieldsync_replica_fallbacks",
            "Reads sent to the primary because the replica could not serve them, by reason",
            labels=["read", "reason"],
        )
        for (read, reason), count in sorted(report.fallbacks.items()):
            fallbacks.add_metric([read, reason], count)
        yield fallbacks
        yield GaugeMetricFamily(
            "fieldsync_replica_usable",
            "1 while reads may go to the read replica (its last check), else 0",
            1 if report.usable else 0,
        )
        if report.lag_seconds is not None:
            yield GaugeMetricFamily(
                "fieldsync_replica_lag_seconds",
                "The read replica's replay lag at its last check (+Inf: not measurable yet)",
                report.lag_seconds,
            )


class Metrics:
    """One process's metrics; ``slow_ms`` is the threshold above which pushes and snapshots
    are also logged (``fieldsync.slow``)."""

    def __init__(self, *, slow_ms: float = 500.0) -> None:
        self.slow_seconds = slow_ms / 1000
        self.registry = registry = CollectorRegistry()
        # python_gc_collections_total and kin, by generation: a full pass walks every object
        # the process holds, and in a storm of connections that is what stalls the loop.
        GCCollector(registry=registry)
        self.connections = Gauge(
            "fieldsync_connections_open", "Open sync WebSocket connections", registry=registry
        )
        self.open_connections = 0  # the gauge's value, for the process's own use
        self._received = _PlainCounts(
            registry,
            "fieldsync_messages_received",
            "Valid protocol messages received, by type",
            "type",
        )
        self.frames_refused = Counter(
            "fieldsync_frames_refused",
            "Frames from clients refused with an error, by error code",
            ["code"],
            registry=registry,
        )
        self.connections_refused = Counter(
            "fieldsync_connections_refused",
            "Connections that ended or were refused before authenticating, by reason",
            ["reason"],
            registry=registry,
        )
        self.connections_unauthenticated = Gauge(
            "fieldsync_connections_unauthenticated",
            "Open sync connections that have not completed the handshake yet",
            registry=registry,
        )
        self.upgrades_waited = Counter(
            "fieldsync_upgrades_waited",
            "Sync upgrades that found the process full and waited for their turn instead of "
            "being refused (those whose turn did not come are refused as turn_not_reached)",
            registry=registry,
        )
        self.upgrades_waiting = Gauge(
            "fieldsync_upgrades_waiting",
            "Sync upgrades waiting for their turn now",
            registry=registry,
        )
        self._log_lines_suppressed = _PlainCounts(
            registry,
            "fieldsync_log_lines_suppressed",
            "Log lines left out by the log rate limit, by event",
            "event",
        )
        self._sent = _SentMessages(registry)
        self.pushes = Counter(
            "fieldsync_pushes",
            "Pushes answered: accepted (a push_result went out) or refused whole (reason: "
            "the error code)",
            ["result", "reason"],
            registry=registry,
        )
        self.push_entities = Counter(
            "fieldsync_push_entities",
            "Entity change sets in push results: accepted, or rejected by reject code",
            ["result", "reason"],
            registry=registry,
        )
        self.changes_appended = Counter(
            "fieldsync_changes_appended", "Changes newly appended to the log", registry=registry
        )
        self.conflicts = Counter(
            "fieldsync_conflicts_found",
            "Conflicts found after merges, by kind",
            ["kind"],
            registry=registry,
        )
        self.snapshot_bytes = Histogram(
            "fieldsync_snapshot_bytes",
            "Document bytes of each snapshot served",
            ["transport"],
            buckets=_BYTES_BUCKETS,
            registry=registry,
        )
        self.snapshot_seconds = Histogram(
            "fieldsync_snapshot_duration_seconds",
            "Time to serve a snapshot, from its transaction's start to its last entity queued",
            ["transport"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.push_seconds = Histogram(
            "fieldsync_push_to_commit_seconds",
            "From a push message handled to its transaction committed",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.fanout_seconds = Histogram(
            "fieldsync_commit_to_fanout_seconds",
            "From a commit known to this process (local: committed here; remote: its pointer "
            "arrived) to its changes queued for every live subscriber",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.feed_reads = Counter(
            "fieldsync_feed_log_reads",
            "Reads of the change log by the live feeds (another process's commits, or a feed "
            "catching up); several pointers that arrive together share one",
            registry=registry,
        )
        self.outbox_age = Histogram(
            "fieldsync_client_outbox_age_seconds",
            "Age of the oldest unacknowledged change clients reported at handshake",
            buckets=_AGE_BUCKETS,
            registry=registry,
        )
        self.database_up = Gauge(
            "fieldsync_database_up", "1 while the database answers, else 0", registry=registry
        )
        self.send_queues = SendQueues(registry)
        self._fanout = FanoutClock()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def watch_pool(self, pool: PoolLike) -> None:
        self.registry.register(_PoolCollector(pool))

    def watch_replica(self, replica: ReplicaLike) -> None:
        self.registry.register(_ReplicaCollector(replica))

    def connection_opened(self) -> None:
        self.open_connections += 1
        self.connections.inc()

    def connection_closed(self) -> None:
        self.open_connections -= 1
        self.connections.dec()

    def received(self, message: object) -> None:
        self._received.add(getattr(message, "TYPE", "unknown"))
        if isinstance(message, Hello) and message.outbox_age_ms is not None:
            self.outbox_age.observe(message.outbox_age_ms / 1000)

    def sent(self, kind: str, size: int) -> None:
        """A frame of message type ``kind`` and ``size`` bytes was sent or queued for a
        client. Called once per frame and client (fan-out), so it only adds to two ints."""
        self._sent.add(kind, size)

    def push_committed(self, started: float, push: Push, results: Sequence[AppendResult]) -> None:
        """A push's transaction committed; ``started`` is when it was handled (monotonic)."""
        seconds = time.monotonic() - started
        self.push_seconds.observe(seconds)
        self.pushes.labels("accepted", "").inc()
        for result in results:
            if isinstance(result, Rejected):
                self.push_entities.labels("rejected", result.rejection.code.value).inc()
            else:
                self.push_entities.labels("accepted", "").inc()
        if seconds >= self.slow_seconds:
            log.warning(
                "slow push: %.0f ms",
                seconds * 1000,
                extra={
                    "event": "slow_push",
                    "duration_ms": round(seconds * 1000, 1),
                    "project_id": push.project_id,
                    "push_id": push.push_id,
                    "entities": len(push.entities),
                },
            )

    def frame_refused(self, code: str) -> None:
        self.frames_refused.labels(code).inc()

    def connection_refused(self, reason: str) -> None:
        """A connection ended before authenticating; ``reason`` starts with a code word."""
        self.connections_refused.labels(_reason_label(reason)).inc()

    def upgrade_waited(self) -> None:
        self.upgrades_waited.inc()

    def log_line_suppressed(self, event: str) -> None:
        self._log_lines_suppressed.add(event)

    def push_refused(self, code: str) -> None:
        self.pushes.labels("refused", code).inc()

    def appended(self, project_id: UUID, head: int, count: int) -> None:
        """``count`` changes up to seq ``head`` were just committed in this process."""
        if count:
            self.changes_appended.inc(count)
            self._fanout.mark(project_id, head, time.monotonic(), LOCAL)

    def conflict_found(self, kind: str) -> None:
        """A merge produced a conflict of ``kind`` (a ``docs/conflicts.md`` kind)."""
        self.conflicts.labels(kind).inc()

    def conflicts_found(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            self.conflict_found(kind)

    def snapshot_served(
        self, transport: str, project_id: UUID, document_bytes: int, started: float
    ) -> None:
        """A snapshot went out; ``started`` is when its transaction began (monotonic)."""
        seconds = time.monotonic() - started
        self.snapshot_bytes.labels(transport).observe(document_bytes)
        self.snapshot_seconds.labels(transport).observe(seconds)
        if seconds >= self.slow_seconds:
            log.warning(
                "slow snapshot: %.0f ms",
                seconds * 1000,
                extra={
                    "event": "slow_snapshot",
                    "duration_ms": round(seconds * 1000, 1),
                    "project_id": str(project_id),
                    "transport": transport,
                    "bytes": document_bytes,
                },
            )

    # The live feeds report here (live.feed.FeedObserver).

    def pointer(self, project_id: UUID, seq: int) -> None:
        self._fanout.mark(project_id, seq, time.monotonic(), REMOTE)

    def read(self, project_id: UUID) -> None:
        self.feed_reads.inc()

    def dispatched(self, project_id: UUID, head: int) -> None:
        for source, seconds in self._fanout.dispatched(project_id, head, time.monotonic()):
            self.fanout_seconds.labels(source).observe(seconds)
