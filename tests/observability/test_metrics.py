"""The metrics: pure pieces, then ``GET /metrics`` of real servers after real sessions."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fieldsync.model.writer import create_entity, update_entity
from fieldsync.observability.fanout import FanoutClock
from fieldsync.observability.metrics import Metrics
from fieldsync.sync.messages import (
    EntityAccepted,
    EntityPush,
    EntityRejected,
    Error,
    Hello,
    ProjectCursor,
    Push,
    Welcome,
)
from tests.entities import location_values, new_id
from tests.live.test_sync import push
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(base: str) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_fanout_clock_pairs_marks_with_dispatches() -> None:
    clock = FanoutClock(max_projects=2, max_marks=3)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    clock.mark(a, 5, 10.0, "local")
    clock.mark(a, 5, 11.0, "remote")  # already known: the earliest mark stays
    clock.mark(a, 9, 12.0, "remote")
    assert clock.dispatched(a, 7, 12.5) == [("local", 2.5)]
    assert clock.dispatched(a, 9, 13.0) == [("remote", 1.0)]
    assert clock.dispatched(a, 20, 14.0) == []
    clock.mark(a, 1, 0.0, "local")
    clock.mark(b, 1, 0.0, "local")
    clock.mark(c, 1, 0.0, "local")  # a project too many: the oldest goes
    assert clock.dispatched(a, 1, 1.0) == []
    assert len(clock) == 2
    for seq in range(10):
        clock.mark(b, seq + 2, 0.0, "local")
    assert len(clock) == 4  # b keeps its 3 newest marks


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.conflict_found("overlapping_summonings")
    first.conflicts_found(["overlapping_summonings", "end_before_start"])
    one, two = samples(first.exposition().decode()), samples(second.exposition().decode())
    assert value(one, "fieldsync_conflicts_found_total", kind="overlapping_summonings") == 2
    assert value(one, "fieldsync_conflicts_found_total", kind="end_before_start") == 1
    assert value(two, "fieldsync_conflicts_found_total", kind="overlapping_summonings") == 0


async def test_a_session_shows_in_the_metrics(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with running_server(database_url) as first, running_server(database_url) as second:
        pusher, watcher = await SyncClient.connect(first), await SyncClient.connect(second)
        await pusher.send(
            Hello((1,), token, "tablet", (ProjectCursor(str(project), None),), 90_000)
        )
        await pusher.expect(Welcome)
        await pusher.sync_until_synced(str(project))
        await watcher.hello(token, [ProjectCursor(str(project), 0)])
        await watcher.sync_until_synced(str(project))

        entity = new_id()
        doc, created = create_entity("location", location_values())
        edited = update_entity(doc, "location", {"name": "North gate"})
        result = await push(
            pusher,
            project,
            1,
            EntityPush("location", entity, (created, edited)),
            EntityPush("no_such_type", new_id(), (created,)),
        )
        assert isinstance(result.results[0], EntityAccepted)
        assert isinstance(result.results[1], EntityRejected)
        await pusher.receive_changes_until(str(project), 2)
        await watcher.receive_changes_until(str(project), 2, within=10)

        here, there = await scrape(first), await scrape(second)
        assert value(here, "fieldsync_connections_open") == 1
        assert value(here, "fieldsync_messages_received_total", type="hello") == 1
        assert value(here, "fieldsync_messages_received_total", type="push") == 1
        assert value(here, "fieldsync_messages_sent_total", type="welcome") == 1
        assert value(here, "fieldsync_messages_sent_total", type="push_result") == 1
        assert value(here, "fieldsync_messages_sent_total", type="snapshot_begin") == 1
        assert value(here, "fieldsync_messages_sent_total", type="changes") >= 1
        assert value(here, "fieldsync_pushes_total", result="accepted", reason="") == 1
        assert value(here, "fieldsync_push_entities_total", result="accepted", reason="") == 1
        assert (
            value(
                here,
                "fieldsync_push_entities_total",
                result="rejected",
                reason="unknown_entity_type",
            )
            == 1
        )
        assert value(here, "fieldsync_changes_appended_total") == 2
        assert value(here, "fieldsync_push_to_commit_seconds_count") == 1
        assert value(here, "fieldsync_snapshot_bytes_count", transport="websocket") == 1
        assert value(here, "fieldsync_snapshot_duration_seconds_count", transport="websocket") == 1
        assert value(here, "fieldsync_client_outbox_age_seconds_count") == 1
        assert value(here, "fieldsync_client_outbox_age_seconds_bucket", le="60.0") == 0
        assert value(here, "fieldsync_client_outbox_age_seconds_bucket", le="300.0") == 1
        assert value(here, "fieldsync_commit_to_fanout_seconds_count", source="local") == 1
        assert value(here, "fieldsync_send_queue_depth_count") >= 1
        assert value(here, "fieldsync_db_pool_max_connections") == 10
        assert value(here, "fieldsync_db_pool_connections", state="in_use") >= 0
        assert value(here, "fieldsync_database_up") == 1
        # The other process saw the commit only through its pointer, and appended nothing.
        assert value(there, "fieldsync_changes_appended_total") == 0
        assert value(there, "fieldsync_pushes_total", result="accepted", reason="") == 0
        assert value(there, "fieldsync_commit_to_fanout_seconds_count", source="remote") == 1
        assert value(here, "fieldsync_feed_log_reads_total") == 0  # it had the commit itself
        assert value(there, "fieldsync_feed_log_reads_total") >= 1
        assert value(there, "fieldsync_messages_sent_total", type="changes") >= 1

        await pusher.close()
        await watcher.close()


async def test_refused_pushes_are_counted_by_reason(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, viewer = await member(project, "viewer")
    async with running_server(database_url) as base:
        client = await SyncClient.connect(base)
        await client.hello(viewer)
        _, created = create_entity("location", location_values())
        await client.send(Push(7, str(project), (EntityPush("location", new_id(), (created,)),)))
        refusal = await client.next_unabsorbed()
        assert isinstance(refusal, Error)
        assert refusal.code == "forbidden"
        found = await scrape(base)
        assert value(found, "fieldsync_pushes_total", result="refused", reason="forbidden") == 1
        assert value(found, "fieldsync_messages_sent_total", type="error") == 1
        await client.close()


async def test_http_snapshots_are_measured(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with running_server(database_url) as base:
        async with httpx.AsyncClient() as http:
            response = await http.get(
                f"http://{base}/projects/{project}/snapshot",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200
        found = await scrape(base)
    assert value(found, "fieldsync_snapshot_bytes_count", transport="http") == 1
    assert value(found, "fieldsync_snapshot_duration_seconds_count", transport="http") == 1
