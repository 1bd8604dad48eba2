"""The SDK names itself in its hello: the server's members' sync health shows its version."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from fieldsync_client.version import CLIENT_VERSION, __version__
from tests.client.conftest import OnlineFactory, RestartableServer


async def test_the_sdk_sends_its_version_and_the_server_shows_it(
    server: RestartableServer, project: uuid.UUID, online: OnlineFactory
) -> None:
    assert f"fieldsync-client-python/{__version__}" == CLIENT_VERSION
    device = await online(server.url, project, "tablet")
    url = f"http://{server.base}/api/v1/projects/{project}/members/health"
    async with httpx.AsyncClient() as http:
        for _ in range(100):  # written off the session's path, within about a second
            answer = await http.get(url, headers={"Authorization": f"Bearer {device.token}"})
            [item] = answer.json()["items"]
            if item["connected"]:
                break
            await asyncio.sleep(0.05)
    assert item["user_id"] == str(device.user_id)
    assert (item["connected"], item["client_version"]) == (True, CLIENT_VERSION)
    assert item["outbox_age_ms"] is None  # nothing waiting in the outbox at hello
