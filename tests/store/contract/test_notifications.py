"""Pointers between processes sharing one storage, and storage's health."""

from __future__ import annotations

import asyncio
import uuid

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.ports import ChangeLogPort, PointerHandler, Storage
from tests.entities import location_values, new_id
from tests.store.contract.conftest import new_member

WITHIN = 10.0


async def test_a_head_notified_by_one_process_reaches_the_listeners_of_every_process(
    storage: Storage, peer: Storage, project: uuid.UUID
) -> None:
    heard: list[int] = []
    own: list[int] = []

    def on_pointer(into: list[int]) -> PointerHandler:
        def heard_one(project_id: uuid.UUID, seq: int) -> None:
            if project_id == project:
                into.append(seq)

        return heard_one

    listening = [
        asyncio.create_task(storage.notifications.listen_heads(on_pointer(heard))),
        asyncio.create_task(peer.notifications.listen_heads(on_pointer(own))),
    ]
    try:
        async with asyncio.timeout(WITHIN):
            # Listening starts on its own connection: notify until it is heard.
            while 7 not in heard or 7 not in own:
                await peer.notifications.notify_head(project, 7)
                await asyncio.sleep(0.05)
    finally:
        for task in listening:
            task.cancel()
        await asyncio.gather(*listening, return_exceptions=True)
    assert set(heard) == set(own) == {7}


async def test_a_removal_reaches_every_listener_once_it_is_done(
    storage: Storage, peer: Storage, project: uuid.UUID
) -> None:
    user = await new_member(storage, project, "specialist")
    removals: list[tuple[uuid.UUID, uuid.UUID]] = []
    connected, removed = asyncio.Event(), asyncio.Event()

    def on_removed(project_id: uuid.UUID, user_id: uuid.UUID) -> None:
        if project_id == project:
            removals.append((project_id, user_id))
            removed.set()

    listening = asyncio.create_task(
        storage.notifications.listen_removals(on_removed, on_connected=connected.set)
    )
    try:
        async with asyncio.timeout(WITHIN):
            await connected.wait()
            assert await storage.membership.level(project, user) == "specialist"
            await peer.admin.remove_member(project, user)
            await removed.wait()
            await asyncio.sleep(0.1)  # nothing more follows
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
    assert removals == [(project, user)]


async def test_the_periodic_head_check_reports_the_watched_projects(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID, other_project: uuid.UUID
) -> None:
    _, created = create_entity("location", location_values())
    await log.append(project, [EntityChanges("location", new_id(), [created])], "u")
    reported: list[tuple[uuid.UUID, int]] = []
    twice = asyncio.Event()
    unknown = uuid.uuid4()

    def on_pointer(project_id: uuid.UUID, seq: int) -> None:
        reported.append((project_id, seq))
        if len(reported) >= 4:
            twice.set()

    polling = asyncio.create_task(
        storage.notifications.poll_heads(
            lambda: [project, other_project, unknown], on_pointer, interval=0.02
        )
    )
    try:
        async with asyncio.timeout(WITHIN):
            await twice.wait()
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
    assert set(reported) == {(project, 1), (other_project, 0)}


async def test_health_answers_while_storage_serves(storage: Storage) -> None:
    probe = storage.health.probe()
    try:
        assert await probe.problem(2.0) is None
        assert await probe.problem(2.0) is None  # and again, on its own resources
    finally:
        probe.close()
