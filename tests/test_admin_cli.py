"""The admin commands, `fieldsync demo` and the SDK's offline example, run as real processes.

Every command runs as a subprocess against the session's test database. Tokens are signed
with ``FIELDSYNC_SECRET``, set in the environment of every process here, so a token printed
by one command is accepted by a `fieldsync serve` started by another.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fieldsync.auth.tokens import verify_token
from fieldsync.cli import example_lines
from fieldsync.store.projects import member_level
from tests.test_server_command import FIELDSYNC, serving

SECRET = "admin-cli-test-secret-that-is-long-enough"
EXAMPLE = (
    Path(__file__).resolve().parents[1] / "client-sdk" / "python" / "examples" / "offline_edit.py"
)
RUN_TIMEOUT = 60.0
UUID_LINE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n\Z")


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str
    err: str

    def ok(self) -> str:
        """stdout of a command that must have succeeded quietly."""
        assert self.code == 0, self
        assert self.err == "", self
        return self.out

    def refused(self) -> str:
        """The one stderr line of a command that must have been refused cleanly."""
        assert self.code == 1, self
        assert self.out == "", self
        lines = self.err.splitlines()
        assert len(lines) == 1, self
        assert lines[0].startswith("fieldsync: error: "), self
        return lines[0]


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every process started here (including by ``serving``) signs with this secret."""
    monkeypatch.setenv("FIELDSYNC_SECRET", SECRET)
    return SECRET


async def _exec(*argv: str) -> Ran:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


class Fieldsync:
    """`fieldsync ...` against one database, with a private (temporary) data directory."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self.database_url = database_url
        self.data_dir = data_dir

    async def __call__(self, *args: str) -> Ran:
        assert FIELDSYNC.exists(), f"{FIELDSYNC} missing: install the project (pip install -e .)"
        return await _exec(
            str(FIELDSYNC), *args,
            "--database-url", self.database_url, "--data-dir", str(self.data_dir),
        )

    async def new_id(self, *args: str) -> uuid.UUID:
        out = (await self(*args)).ok()
        assert UUID_LINE.match(out), out
        return uuid.UUID(out.strip())


@pytest.fixture
def fieldsync(database_url: str, tmp_path: Path) -> Fieldsync:
    return Fieldsync(database_url, tmp_path)


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[Any]:
    async with pool.acquire() as connection:
        yield connection


def _email() -> str:
    return f"ana.field+{uuid.uuid4().hex[:8]}@example.org"


async def test_create_account_user_project_and_manage_members(
    fieldsync: Fieldsync, conn: Any
) -> None:
    account = await fieldsync.new_id("account", "create", "--name", "Glacier Lab")
    email = _email()
    user = await fieldsync.new_id(
        "user", "create", "--name", "Ana Field", "--email", email, "--account", str(account)
    )
    loner = await fieldsync.new_id("user", "create", "--name", "Ben Stone")
    project = await fieldsync.new_id(
        "project", "create", "--account", str(account), "--name", "Moraine 2027"
    )

    assert await conn.fetchval("SELECT name FROM accounts WHERE account_id = $1", account) == (
        "Glacier Lab"
    )
    row = await conn.fetchrow("SELECT * FROM users WHERE user_id = $1", user)
    assert (row["display_name"], row["email"], row["account_id"]) == ("Ana Field", email, account)
    row = await conn.fetchrow("SELECT * FROM users WHERE user_id = $1", loner)
    assert (row["email"], row["account_id"]) == (None, None)
    row = await conn.fetchrow("SELECT * FROM projects WHERE project_id = $1", project)
    assert (row["name"], row["account_id"]) == ("Moraine 2027", account)
    head = await conn.fetchval("SELECT head_seq FROM log_heads WHERE project_id = $1", project)
    assert head == 0

    member = ("--project", str(project), "--user", str(user))
    assert (await fieldsync("member", "add", *member, "--level", "specialist")).ok() == ""
    assert await member_level(conn, project, user) == "specialist"
    changed = json.loads((await fieldsync("member", "add", *member, "--level", "lead", "--json"))
                         .ok())
    assert changed == {
        "project_id": str(project),
        "user_id": str(user),
        "level": "lead",
        "previous_level": "specialist",
    }
    assert await member_level(conn, project, user) == "lead"

    removed = json.loads((await fieldsync("member", "remove", *member, "--json")).ok())
    assert removed == {"project_id": str(project), "user_id": str(user), "removed_level": "lead"}
    assert await member_level(conn, project, user) is None


async def test_json_output(fieldsync: Fieldsync, conn: Any) -> None:
    account = json.loads((await fieldsync("account", "create", "--name", "A", "--json")).ok())
    account_id = uuid.UUID(account["account_id"])
    project = json.loads(
        (await fieldsync("project", "create", "--account", str(account_id), "--name", "P",
                         "--json")).ok()
    )
    user = json.loads((await fieldsync("user", "create", "--name", "U", "--json")).ok())
    assert set(account) == {"account_id"}
    assert set(project) == {"project_id"}
    assert set(user) == {"user_id"}
    owner = await conn.fetchval(
        "SELECT account_id FROM projects WHERE project_id = $1", uuid.UUID(project["project_id"])
    )
    assert owner == account_id


async def test_token_command(fieldsync: Fieldsync) -> None:
    user = await fieldsync.new_id("user", "create", "--name", "Ana Field")
    token = (await fieldsync("token", "--user", str(user))).ok().strip()
    assert verify_token(SECRET.encode(), token).user_id == user

    issued = json.loads((await fieldsync("token", "--user", str(user), "--ttl", "60", "--json"))
                        .ok())
    claims = verify_token(SECRET.encode(), issued["token"])
    assert claims.user_id == user
    assert issued["user_id"] == str(user)
    assert datetime.fromisoformat(issued["expires_at"]).timestamp() == claims.expires_at


async def test_refusals_are_one_line_with_exit_status_1(fieldsync: Fieldsync) -> None:
    account = await fieldsync.new_id("account", "create", "--name", "Glacier Lab")
    email = _email()
    user = await fieldsync.new_id("user", "create", "--name", "Ana", "--email", email)
    project = await fieldsync.new_id("project", "create", "--account", str(account), "--name", "P")
    nobody, nowhere = str(uuid.uuid4()), str(uuid.uuid4())
    member = ("--project", str(project), "--user", str(user))

    cases: list[tuple[tuple[str, ...], str]] = [
        (("account", "create", "--name", "  "), "the account name must not be empty"),
        (("user", "create", "--name", "Ana", "--account", nowhere), f"unknown account {nowhere}"),
        (("user", "create", "--name", "Ana 2", "--email", email.upper()),
         f"a user with email {email.upper()} already exists"),
        (("user", "create", "--name", "Ana", "--email", "ana at example"),
         "'ana at example' is not an email address"),
        (("project", "create", "--account", nowhere, "--name", "P"), f"unknown account {nowhere}"),
        (("member", "add", "--project", nowhere, "--user", str(user), "--level", "lead"),
         f"unknown project {nowhere}"),
        (("member", "add", "--project", str(project), "--user", nobody, "--level", "lead"),
         f"unknown user {nobody}"),
        (("member", "remove", *member), f"user {user} is not a member of project {project}"),
        (("member", "remove", "--project", nowhere, "--user", str(user)),
         f"unknown project {nowhere}"),
        (("token", "--user", nobody), f"unknown user {nobody}"),
        (("project", "list", "--account", nowhere), f"unknown account {nowhere}"),
        (("user", "list", "--account", nowhere), f"unknown account {nowhere}"),
        (("project", "show", nowhere), f"unknown project {nowhere}"),
        (("member", "list", "--project", nowhere), f"unknown project {nowhere}"),
    ]
    results = await asyncio.gather(*(fieldsync(*args) for args, _ in cases))
    for (args, expected), ran in zip(cases, results, strict=True):
        line = ran.refused()
        assert expected in line, (args, line)


async def test_lists_and_show_name_what_the_create_commands_made(
    fieldsync: Fieldsync,
) -> None:
    account = await fieldsync.new_id("account", "create", "--name", "Glacier   Lab")
    other = await fieldsync.new_id("account", "create", "--name", "Other")
    email = _email()
    ana = await fieldsync.new_id(
        "user", "create", "--name", "Ana Field", "--email", email, "--account", str(account)
    )
    ben = await fieldsync.new_id("user", "create", "--name", "Ben", "--account", str(account))
    await fieldsync.new_id("user", "create", "--name", "Elsewhere", "--account", str(other))
    project = await fieldsync.new_id(
        "project", "create", "--account", str(account), "--name", "Moraine 2027"
    )
    await fieldsync.new_id("project", "create", "--account", str(account), "--name", "Lake")
    await fieldsync.new_id("project", "create", "--account", str(other), "--name", "Other")
    for user, level in ((ana, "lead"), (ben, "viewer")):
        await fieldsync("member", "add", "--project", str(project), "--user", str(user),
                        "--level", level)  # fmt: skip

    async def listed(*args: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((await fieldsync(*args, "--json")).ok())
        return document

    listing, by_account, all_users, account_projects, shown, members = await asyncio.gather(
        listed("account", "list"),
        listed("user", "list", "--account", str(account)),
        listed("user", "list"),
        listed("project", "list", "--account", str(account)),
        listed("project", "show", str(project)),
        listed("member", "list", "--project", str(project)),
    )
    accounts = listing["accounts"]
    mine = next(a for a in accounts if a["account_id"] == str(account))
    assert (mine["name"], mine["projects"], mine["users"]) == ("Glacier   Lab", 2, 2)
    ids = [a["account_id"] for a in accounts]
    assert ids.index(str(account)) < ids.index(str(other))  # oldest first

    users = by_account["users"]
    assert [(u["user_id"], u["name"], u["email"]) for u in users] == [
        (str(ana), "Ana Field", email), (str(ben), "Ben", None)
    ]
    everyone = {u["user_id"] for u in all_users["users"]}
    assert {str(ana), str(ben)} < everyone

    projects = account_projects["projects"]
    assert [(p["name"], p["members"], p["head_seq"]) for p in projects] == [
        ("Moraine 2027", 2, 0), ("Lake", 0, 0)
    ]
    assert shown["project_id"] == str(project)
    assert (shown["account_id"], shown["account_name"]) == (str(account), "Glacier   Lab")
    assert shown["members"] == {"lead": 1, "specialist": 0, "viewer": 1}

    assert members["project_id"] == str(project)
    assert [(m["user_id"], m["level"], m["name"]) for m in members["members"]] == [
        (str(ana), "lead", "Ana Field"), (str(ben), "viewer", "Ben")
    ]

    # Plain output: a header, then one row per item with its id first.
    plain_members, plain_accounts, plain_project = await asyncio.gather(
        fieldsync("member", "list", "--project", str(project)),
        fieldsync("account", "list"),
        fieldsync("project", "show", str(project)),
    )
    table = plain_members.ok().splitlines()
    assert table[0].split() == ["USER", "ID", "LEVEL", "NAME", "EMAIL"]
    assert [row.split()[:2] for row in table[1:]] == [[str(ana), "lead"], [str(ben), "viewer"]]
    table = plain_accounts.ok().splitlines()
    row = next(row for row in table if row.startswith(str(account)))
    assert "  Glacier Lab  " in row  # runs of whitespace in names do not break the columns
    plain = plain_project.ok()
    assert 'Project "Moraine 2027"' in plain
    assert "lead 1, specialist 0, viewer 1" in plain


async def test_token_never_makes_a_secret_of_its_own(
    fieldsync: Fieldsync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token signed with a new random secret would be refused by every running server."""
    user = await fieldsync.new_id("user", "create", "--name", "Ana")
    monkeypatch.delenv("FIELDSYNC_SECRET")
    line = (await fieldsync("token", "--user", str(user))).refused()
    assert f"no token secret at {fieldsync.data_dir / 'token-secret'}" in line
    assert not (fieldsync.data_dir / "token-secret").exists()


async def test_admin_commands_refuse_an_unmigrated_database(
    fresh_database_url: str, tmp_path: Path
) -> None:
    fieldsync = Fieldsync(fresh_database_url, tmp_path)
    line = (await fieldsync("account", "create", "--name", "A")).refused()
    assert "run `fieldsync migrate` first" in line


async def test_a_short_secret_is_refused_cleanly(
    fieldsync: Fieldsync, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await fieldsync.new_id("user", "create", "--name", "Ana")
    monkeypatch.setenv("FIELDSYNC_SECRET", "short")
    line = (await fieldsync("token", "--user", str(user))).refused()
    assert "FIELDSYNC_SECRET must be at least 32 characters" in line


async def _demo(fieldsync: Fieldsync) -> dict[str, Any]:
    demo: dict[str, Any] = json.loads((await fieldsync("demo", "--json")).ok())
    return demo


async def test_demo_seeds_the_read_models_through_the_change_log(
    fieldsync: Fieldsync, conn: Any
) -> None:
    first, second = await _demo(fieldsync), await _demo(fieldsync)  # twice: two demos
    assert first["project_id"] != second["project_id"]
    project = uuid.UUID(first["project_id"])

    users = first["users"]
    assert [u["level"] for u in users] == ["lead", "specialist", "specialist"]
    for user in users:
        user_id = uuid.UUID(user["user_id"])
        assert verify_token(SECRET.encode(), user["token"]).user_id == user_id
        assert await member_level(conn, project, user_id) == user["level"]
    lead = users[0]["user_id"]

    expected = {
        "project_settings": 1, "plan": 1, "role": 4, "location": 5, "activity": 15,
        "summoning": 20, "membership": 3,
    }
    assert first["entities"] == expected
    total = sum(expected.values())
    assert first["head_seq"] == total
    logged = await conn.fetch(
        "SELECT entity_type, sender FROM changes WHERE project_id = $1", project
    )
    assert len(logged) == total
    assert {r["sender"] for r in logged} == {lead}

    async def count(table: str, where: str = "TRUE") -> int:
        n: int = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE project_id = $1 AND NOT deleted AND {where}",
            project,
        )
        return n

    assert await count("rm_project_settings", "name = 'Alpine survey 2027'") == 1
    assert await count("rm_plans") == 1
    assert await count("rm_roles", "cardinality(skills) > 0") == 4
    assert await count("rm_locations", "latitude IS NOT NULL AND longitude IS NOT NULL") == 5
    assert await count("rm_activities", "tasks_total > 0") == 15
    assert await count("rm_summonings") == 20
    assert await count("rm_memberships") == 3

    # Activities take place at the demo's locations, over three weeks.
    at_known_places = await count(
        "rm_activities",
        "location_id IN (SELECT entity_id FROM rm_locations WHERE project_id = $1)",
    )
    assert at_known_places == 15
    first_start, last_end = await conn.fetchrow(
        "SELECT min(starts_at), max(ends_at) FROM rm_activities WHERE project_id = $1", project
    )
    assert timedelta(days=14) < last_end - first_start < timedelta(days=21)
    # Summonings name the demo's activities, and every user is summoned somewhere.
    assert await count(
        "rm_summonings",
        "activity_id IN (SELECT entity_id FROM rm_activities WHERE project_id = $1)",
    ) == 20
    summoned = await conn.fetch(
        "SELECT DISTINCT user_id FROM rm_summonings WHERE project_id = $1 AND user_id IS NOT NULL",
        project,
    )
    assert {r["user_id"] for r in summoned} == {u["user_id"] for u in users}
    members = await conn.fetch(
        "SELECT user_id FROM rm_memberships WHERE project_id = $1", project
    )
    assert {r["user_id"] for r in members} == {u["user_id"] for u in users}


_USER_LINE = re.compile(
    r"^  (?P<name>\S.*?)  +(?P<level>lead|specialist|viewer) +user (?P<id>\S+)$"
)


def _users_of(out: str) -> list[dict[str, str]]:
    """The users `fieldsync demo` printed: name, level, user_id and the token below each."""
    lines = out.splitlines()
    users = []
    for index, line in enumerate(lines):
        match = _USER_LINE.match(line)
        if match:
            token = lines[index + 1].split("token ")[1]
            users.append({"name": match["name"], "level": match["level"],
                          "user_id": match["id"], "token": token})  # fmt: skip
    return users


async def test_demo_prints_a_readable_block(fieldsync: Fieldsync) -> None:
    out = (await fieldsync("demo")).ok()
    assert 'Demo project "Alpine survey 2027"' in out
    assert "15 activities" in out
    assert "20 summonings" in out
    users = _users_of(out)
    assert [(u["name"], u["level"]) for u in users] == [
        ("Marta Keller", "lead"), ("Jonas Weber", "specialist"), ("Lena Roth", "specialist")
    ]
    for user in users:
        assert verify_token(SECRET.encode(), user["token"]).user_id == uuid.UUID(user["user_id"])
    # No server runs with this data directory: the example command names the default and
    # says how to point it elsewhere.
    assert "server ws://127.0.0.1:8000/sync: no `fieldsync serve` runs with this --data-dir; " \
        "else pass --server-url" in out
    command = _printed_command(out)
    assert command[:2] == [sys.executable, str(EXAMPLE)]
    assert command[2:] == [
        "--url", "ws://127.0.0.1:8000/sync", "--project", _project_of(out),
        "--token", users[0]["token"], "--token2", users[1]["token"],
    ]  # fmt: skip


def _project_of(out: str) -> str:
    match = re.search(r"^  project id  (\S+)$", out, re.MULTILINE)
    assert match is not None, out
    return match[1]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://10.0.0.5:8001", "ws://10.0.0.5:8001/sync"),
        ("https://sync.example.org/", "wss://sync.example.org/sync"),
        ("wss://sync.example.org/fieldsync/sync", "wss://sync.example.org/fieldsync/sync"),
    ],
)
async def test_demo_takes_the_servers_url(
    fieldsync: Fieldsync, given: str, expected: str
) -> None:
    out = (await fieldsync("demo", "--server-url", given)).ok()
    command = _printed_command(out)
    assert command[command.index("--url") + 1] == expected
    assert f"server {expected}: --server-url" in out


def test_the_example_command_says_how_to_install_the_sdk_it_needs() -> None:
    demo = {
        "project_id": "p",
        "users": [{"level": "lead", "token": "t1"}, {"level": "specialist", "token": "t2"}],
    }
    python = "/opt/my env/bin/python"
    lines = example_lines(
        demo, "ws://h:1/sync", "--server-url", python=python, example=EXAMPLE,
        sdk_installed=False,
    )  # fmt: skip
    install = lines.index("  This Python lacks the client SDK the example uses; install it first:")
    assert shlex.split(lines[install + 1]) == [
        python, "-m", "pip", "install", "-e", str(EXAMPLE.parents[1])
    ]
    assert str(EXAMPLE.parents[1]).endswith("client-sdk/python")
    installed = example_lines(
        demo, "ws://h:1/sync", "--server-url", python=python, example=EXAMPLE,
        sdk_installed=True,
    )  # fmt: skip
    assert not any("pip install" in line for line in installed)
    assert installed[-5:] == lines[-5:]
    assert shlex.split(lines[-5].removesuffix("\\")) == [python, str(EXAMPLE)]


def _merged_documents(out: str) -> list[dict[str, Any]]:
    """The JSON document printed after each ``Merged activity ... on tablet N`` line."""
    decoder = json.JSONDecoder()
    documents = []
    for match in re.finditer(r"^Merged activity \S+ on tablet \d .*:\n", out, re.MULTILINE):
        document, _ = decoder.raw_decode(out, match.end())
        documents.append(document)
    return documents


def _printed_command(out: str) -> list[str]:
    """The example command `fieldsync demo` printed last, as an argument list."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Edit offline"))
    command = " ".join(line.strip().removesuffix("\\") for line in lines[start + 1 :])
    return shlex.split(command)


async def test_offline_example_merges_against_a_real_server(
    fieldsync: Fieldsync, database_url: str, conn: Any
) -> None:
    """The command `fieldsync demo` prints runs as printed, against the server running with
    the same --data-dir, on whatever port that server listens."""
    serve_options = ("--database-url", database_url, "--data-dir", str(fieldsync.data_dir))
    async with serving(*serve_options) as server:
        await server.wait_healthy()
        out = (await fieldsync("demo")).ok()
        command = _printed_command(out)
        assert command[:2] == [sys.executable, str(EXAMPLE)]
        assert command[command.index("--url") + 1] == f"ws://127.0.0.1:{server.port}/sync"
        project_id = command[command.index("--project") + 1]
        ran = await _exec(*command)
        code, log = await server.stop()
    lead, specialist, _ = _users_of(out)
    assert ran.code == 0, ran
    assert code == 0, log
    one, two = _merged_documents(ran.out)
    assert one == two
    assert "The tablets agree" in ran.out
    assert "[Marta Keller: bring the spare radio]" in one["description"]
    assert "[Jonas Weber: rain expected" in one["description"]

    # The server holds the merge too: the read model shows both tablets' field edits.
    activity_id = re.search(r"^Merged activity (\S+) on tablet 1", ran.out, re.MULTILINE)
    assert activity_id is not None
    row = await conn.fetchrow(
        "SELECT status, ends_at FROM rm_activities WHERE project_id = $1 AND entity_id = $2",
        uuid.UUID(project_id),
        activity_id[1],
    )
    assert row["status"] == one["status"] == "in_progress"  # the demo's first one: confirmed
    assert row["ends_at"] == datetime.fromisoformat(one["ends_at"])
    # Both users are summoned to the activity the example chose.
    summoned = await conn.fetch(
        "SELECT user_id FROM rm_summonings WHERE project_id = $1 AND activity_id = $2",
        uuid.UUID(project_id),
        activity_id[1],
    )
    assert {lead["user_id"], specialist["user_id"]} <= {r["user_id"] for r in summoned}
