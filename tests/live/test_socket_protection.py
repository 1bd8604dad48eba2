"""The socket's defences over a real server: browser Origins, no data before a good token,
no tokens in logs, the per-user message rate, and a flood that other clients do not feel."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fieldsync.auth.tokens import issue_token
from fieldsync.live.rate_limit import RateLimit
from fieldsync.model.writer import create_entity
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    EntityAccepted,
    EntityPush,
    Error,
    Hello,
    ProjectCursor,
    Push,
    PushResult,
    Subscribe,
)
from tests.entities import location_values, new_id
from tests.live_server import TEST_SECRET, MemberFactory, running_server
from tests.sync_client import SyncClient

ROOT = Path(__file__).resolve().parents[2]
APP_ORIGIN = "https://plans.glacier-lab.example"


async def test_browser_origins_must_be_on_the_allow_list(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with running_server(database_url, allowed_origins=[APP_ORIGIN + "/"]) as base:
        for refused_origin in ("https://evil.example", "null", "http://plans.glacier-lab.example"):
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"ws://{base}/sync", origin=refused_origin)  # type: ignore[arg-type]
            response = refused.value.response
            assert response.status_code == 403
            assert json.loads(response.body or b"")["code"] == ErrorCode.FORBIDDEN_ORIGIN.value
        allowed: tuple[str | None, ...] = (APP_ORIGIN, APP_ORIGIN.upper(), None)
        for origin in allowed:
            ws = await connect(f"ws://{base}/sync", origin=origin)  # type: ignore[arg-type]
            client = SyncClient(ws)
            await client.hello(token)  # no Origin is a native client: allowed
            await client.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(user: uuid.UUID, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(user),
        "iat": now,
        "exp": now + 600,
        "aud": "fieldsync",
        "iss": "fieldsync",
    }
    claims.update(overrides)
    return claims


def _bad_tokens(user: uuid.UUID) -> dict[str, str]:
    good = issue_token(TEST_SECRET, user)
    header, payload, signature = good.split(".")
    other = _b64(json.dumps(_claims(uuid.uuid4())).encode())
    none_header = _b64(b'{"alg":"none","typ":"JWT"}')
    unsigned = f"{none_header}.{payload}."
    rs_header = _b64(b'{"alg":"RS256","typ":"JWT"}')
    return {
        "expired": issue_token(TEST_SECRET, user, ttl_seconds=1, now=time.time() - 3600),
        "tampered": f"{header}.{other}.{signature}",
        "wrong-audience": jwt.encode(_claims(user, aud="elsewhere"), TEST_SECRET, "HS256"),
        "alg-none": unsigned,
        "hs-rs-confusion": f"{rs_header}.{payload}.{signature}",
        "other-secret": jwt.encode(_claims(user), b"x" * 40, "HS256"),
    }


async def test_no_project_data_flows_before_the_token_is_accepted(
    sync_server: str,
    project: uuid.UUID,
    member: MemberFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, good = await member(project)
    writer = await SyncClient.connect(sync_server)
    await writer.hello(good)
    _, change = create_entity("location", location_values())
    await writer.send(Push(1, str(project), (EntityPush("location", new_id(), (change,)),)))
    assert isinstance(await writer.next_unabsorbed(), PushResult)
    await writer.close()

    caplog.set_level(logging.DEBUG)
    tokens = _bad_tokens(user)
    for name, token in tokens.items():
        client = await SyncClient.connect(sync_server)
        await client.send(Hello((1,), token, "probe", (ProjectCursor(str(project), None),)))
        messages, code = await client.read_until_closed()
        assert len(messages) == 1, (name, messages)
        [error] = messages
        assert isinstance(error, Error)
        expected = ErrorCode.TOKEN_EXPIRED if name == "expired" else ErrorCode.INVALID_TOKEN
        assert (error.code, error.fatal) == (expected.value, True), name
        assert code == CloseCode.UNAUTHORIZED, name

    # A subscribe before the hello is not even read as one.
    early = await SyncClient.connect(sync_server)
    await early.send(Subscribe(ProjectCursor(str(project), None)))
    messages, code = await early.read_until_closed()
    assert [m.code for m in messages if isinstance(m, Error)] == ["handshake_required"]
    assert code == CloseCode.POLICY_VIOLATION

    # Tokens, good or bad, never reach the logs.
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for token in [good, *tokens.values()]:
        for part in token.split("."):
            if len(part) > 16:
                assert part not in logged


async def test_messages_over_the_rate_are_refused_per_user_then_the_connection_closes(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    limit = RateLimit(rate=5, burst=10, max_strikes=30)
    async with running_server(database_url, rate_limit=limit) as base:
        first, second = await SyncClient.connect(base), await SyncClient.connect(base)
        await first.hello(token)  # each hello costs one message
        await second.hello(token)
        # Pushes to a project id that is not one cost no database work: the answer shows
        # only whether the rate let them through.
        for push_id in range(1, 9):
            await first.send(Push(push_id, "not-a-project", ()))
        # The second connection shares the user's bucket: it has two messages left at most.
        for push_id in range(1, 5):
            await second.send(Push(push_id, "not-a-project", ()))
        codes = []
        for client, count in ((first, 8), (second, 4)):
            for _ in range(count):
                error = await client.expect(Error)
                assert not error.fatal
                codes.append(error.code)
        assert codes.count(ErrorCode.PROJECT_UNAVAILABLE.value) <= 10
        assert codes.count(ErrorCode.RATE_LIMITED.value) >= 2
        assert set(codes) <= {ErrorCode.PROJECT_UNAVAILABLE.value, ErrorCode.RATE_LIMITED.value}

        await asyncio.sleep(0.5)  # a little more than two tokens come back
        await second.send(Push(9, "not-a-project", ()))
        back = await second.expect(Error)
        assert back.code == ErrorCode.PROJECT_UNAVAILABLE.value

        # Far over the rate: refused each time, then closed for good.
        for push_id in range(100, 200):
            await first.send(Push(push_id, "not-a-project", ()))
        messages = await _until_dropped(first)
        last = messages[-1]
        assert isinstance(last, Error)
        assert (last.code, last.fatal) == (ErrorCode.RATE_LIMITED.value, True)
        assert "in a row over the rate limit" in last.message
        # The user owes a whole burst now (2 s at this rate), where without the debt a token
        # would be back within 0.2 s: a reconnect meanwhile is refused at the hello, slowly.
        again = await SyncClient.connect(base)
        started = time.monotonic()
        await again.send(Hello((1,), token, "again"))
        messages = await _until_dropped(again)
        assert time.monotonic() - started >= 0.9
        assert [(m.code, m.fatal) for m in messages if isinstance(m, Error)] == [
            ("rate_limited", True)
        ]
        await second.close()


async def _until_dropped(client: SyncClient) -> list[object]:
    """Every message until the server drops the connection, which it does without a close
    frame (a flooding peer is not owed a closing handshake)."""
    messages: list[object] = []
    closed: ConnectionClosed | None = None
    try:
        while True:
            messages.append(await client.receive(within=10))
    except ConnectionClosed as exc:
        closed = exc
    assert closed.rcvd is None, closed
    return messages


async def _push_latencies(base: str, token: str, project: uuid.UUID, count: int) -> list[float]:
    """Sequential pushes of small new entities; each one's time from send to result."""
    client = await SyncClient.connect(base)
    await client.hello(token)
    samples = []
    for n in range(count):
        _, change = create_entity("location", location_values(n))
        started = time.perf_counter()
        await client.send(Push(n, str(project), (EntityPush("location", new_id(), (change,)),)))
        result = await client.next_unabsorbed(within=30)
        samples.append(time.perf_counter() - started)
        assert isinstance(result, PushResult), result
        assert isinstance(result.results[0], EntityAccepted)
        await asyncio.sleep(0.005)  # an app's pace, not a benchmark's
    await client.close()
    return samples


async def _phase(base: str, quiet: list[tuple[str, uuid.UUID]], count: int) -> list[float]:
    runs = await asyncio.gather(*(_push_latencies(base, t, p, count) for t, p in quiet))
    return [sample for run in runs for sample in run]


async def test_a_flood_is_throttled_while_other_clients_keep_their_latency(
    database_url: str, member: MemberFactory, project: uuid.UUID, other_project: uuid.UUID
) -> None:
    """One user floods from another process; three others push as usual. Quiet and flood
    phases alternate so that the machine's own load hits both alike; medians compare."""
    _, flood_token = await member(other_project)
    quiet = [(await member(project))[1] for _ in range(3)]
    clients = [(token, project) for token in quiet]
    limit = RateLimit(rate=50, burst=100, max_strikes=100)
    async with running_server(database_url, rate_limit=limit) as base:
        await _phase(base, clients, 5)  # warm up: caches, connections, the JIT of habits
        calm: list[float] = []
        flooded: list[float] = []
        reports = []
        for _ in range(2):
            calm += await _phase(base, clients, 30)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.live.flood_worker",
                f"ws://{base}/sync",
                flood_token,
                str(other_project),
                "6",
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(1.0)  # the flood is under way
            flooded += await _phase(base, clients, 30)
            out, err = await asyncio.wait_for(worker.communicate(), 60)
            assert worker.returncode == 0, err.decode()
            reports.append(json.loads(out))
    quiet_median = statistics.median(calm)
    flood_median = statistics.median(flooded)
    print(
        f"push->ack median: quiet {quiet_median * 1000:.2f} ms, "
        f"flood {flood_median * 1000:.2f} ms; flooder: {reports}"
    )
    for report in reports:
        # The flooder was cut off again and again, and refused at the door in between.
        assert report["sent"] > 1000, report
        assert report["connections"] >= 2, report
        assert report["refused_hellos"].get("rate_limited", 0) >= 1, report
    assert flood_median <= 2 * quiet_median, (quiet_median, flood_median)
