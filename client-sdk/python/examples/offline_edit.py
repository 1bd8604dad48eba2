"""Two tablets edit the same activity offline, reconnect, and end up with the same document.

Start a server and create the demo project, then run the command ``fieldsync demo`` prints:
it names the server's real address, this venv's own Python and two of the demo's tokens::

    .venv/bin/fieldsync serve &
    .venv/bin/fieldsync demo   # prints the project, a token per user and this command:
    .venv/bin/python client-sdk/examples/offline_edit.py --url ws://HOST:PORT/sync \\
        --project PROJECT_ID --token LEAD_TOKEN --token2 SPECIALIST_TOKEN

The SDK must be installed in that Python (``pip install -e ./client-sdk``; the README's
first command does it).

What happens:

1. Online: each tablet (a client with its own SQLite file in a temporary directory) opens the
   project, which downloads its snapshot.
2. Offline: both clients are reopened without a server URL, so they cannot sync. Each edits
   the same activity: tablet 1 sets its status, tablet 2 moves its end time, and both write
   into its description. The edits wait in each tablet's outbox.
3. Back online: both clients are reopened with the URL. They push their outboxes, pull each
   other's changes, and the example prints the merged activity as each tablet sees it.

Exit status 0 when both tablets hold the same document with every edit kept, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from fieldsync_client import FieldsyncClient, FieldsyncError, Project

STATUS_CYCLE = {"planned": "confirmed", "confirmed": "in_progress", "in_progress": "done"}


class ExampleError(Exception):
    """Something the example cannot get past; the message says what."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except TimeoutError:
        reason = f"timed out after {args.timeout:g} s waiting for {args.url}"
    except (ExampleError, FieldsyncError) as exc:
        reason = str(exc)
    print(f"offline_edit: {reason}", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. ws://127.0.0.1:8000/sync")
    parser.add_argument("--project", required=True, help="the project id (`fieldsync demo`)")
    parser.add_argument("--token", required=True, help="tablet 1's token")
    parser.add_argument("--token2", required=True, help="tablet 2's token")
    parser.add_argument(
        "--activity", default=None, help="the activity to edit (default: one both users attend)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each sync (default 30)"
    )
    return parser


async def run(args: argparse.Namespace) -> int:
    tokens = (args.token, args.token2)
    with tempfile.TemporaryDirectory(prefix="fieldsync-example-") as tmp:
        stores = (Path(tmp) / "tablet-1.db", Path(tmp) / "tablet-2.db")

        # 1. Online: download the project onto both tablets.
        for number, (token, store) in enumerate(zip(tokens, stores, strict=True), start=1):
            async with _client(args.url, token, store, args.timeout) as client:
                project = await client.open_project(args.project)
                if not project.bootstrapped:
                    raise ExampleError(f"tablet {number} could not download the project from "
                                        f"{args.url}: {client.status.last_error or 'no answer'}")
                await client.wait_synced(args.timeout)
                print(f"tablet {number}: downloaded the project (cursor {project.cursor})")

        # 2. Offline: no URL, so these clients never connect. Edit the same activity on both.
        async with (
            FieldsyncClient(None, tokens[0], stores[0]) as offline1,
            FieldsyncClient(None, tokens[1], stores[1]) as offline2,
        ):
            one = await offline1.open_project(args.project)
            two = await offline2.open_project(args.project)
            activity_id = args.activity or await _pick_activity(one, tokens)
            names = await _display_names(one, tokens)
            before = await one.get("activity", activity_id)
            expected = await _edit_offline(one, two, activity_id, before, names)
            print(
                f"offline: tablet 1 has {one.pending_count()} changes waiting, "
                f"tablet 2 has {two.pending_count()}"
            )

        # 3. Back online: both reconnect, push their outboxes and pull each other's changes.
        async with (
            _client(args.url, tokens[0], stores[0], args.timeout) as online1,
            _client(args.url, tokens[1], stores[1], args.timeout) as online2,
        ):
            one, two = await asyncio.gather(
                online1.open_project(args.project), online2.open_project(args.project)
            )
            await asyncio.gather(
                online1.wait_synced(args.timeout), online2.wait_synced(args.timeout)
            )
            async with asyncio.timeout(args.timeout):
                await _until_equal(one, two, activity_id)
            refused = [*await one.rejected_changes(), *await two.rejected_changes()]
            merged1 = await one.get("activity", activity_id)
            merged2 = await two.get("activity", activity_id)
            heads1, heads2 = await one.heads(activity_id), await two.heads(activity_id)

    print()
    print(f"Merged activity {activity_id} on tablet 1 ({names[0]}):")
    print(_json(merged1))
    print(f"Merged activity {activity_id} on tablet 2 ({names[1]}):")
    print(_json(merged2))
    print()
    for change in refused:
        print(f"refused by the server: {change.entity_type} {change.entity_id}: "
              f"{change.code}: {change.message}")
    if merged1 != merged2 or heads1 != heads2:
        print("The tablets disagree.")
        return 1
    lost = [what for what, ok in _kept(merged1, expected).items() if not ok]
    if lost or refused:
        print(f"The tablets agree, but edits were lost: {', '.join(lost) or 'refused changes'}")
        return 1
    print(f"The tablets agree: the same document (heads {_short(heads1)}), every edit kept:")
    for what in expected:
        print(f"  - {what}")
    return 0


def _client(url: str, token: str, store: Path, timeout: float) -> FieldsyncClient:
    return FieldsyncClient(url, token, store, bootstrap_timeout=timeout, backoff_cap=2.0)


def _token_user(token: str) -> str | None:
    """The user id a token names. Read without checking the signature: it only helps choose
    an activity; the server is what verifies tokens."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return None


async def _pick_activity(project: Project, tokens: Sequence[str]) -> str:
    """The earliest activity both users are summoned to, else the earliest of all."""
    activities = await project.list("activity")
    if not activities:
        raise ExampleError(f"project {project.project_id} has no activities: is it the demo?")
    users = {_token_user(token) for token in tokens} - {None}
    attending: dict[str, set[str]] = {}
    for summoning in (await project.list("summoning")).values():
        user = summoning.get("user_id")
        if isinstance(user, str):
            attending.setdefault(str(summoning["activity_id"]), set()).add(user)
    shared = [a for a in activities if users and users <= attending.get(a, set())]

    def starts(activity_id: str) -> str:
        starts_at = activities[activity_id]["starts_at"]
        return starts_at.isoformat() if isinstance(starts_at, datetime) else ""

    return min(shared or activities, key=starts)


async def _display_names(project: Project, tokens: Sequence[str]) -> list[str]:
    """Each token's user as the project's memberships name them."""
    by_user = {
        str(m["user_id"]): str(m.get("display_name", m["user_id"]))
        for m in (await project.list("membership")).values()
    }
    return [
        by_user.get(_token_user(token) or "", f"user of token {number}")
        for number, token in enumerate(tokens, start=1)
    ]


async def _edit_offline(
    one: Project,
    two: Project,
    activity_id: str,
    before: Mapping[str, object],
    names: Sequence[str],
) -> dict[str, tuple[str, object]]:
    """Different fields on each tablet, and the description on both. Returns what to expect
    in the merge: a description of each edit -> (field, value or text it must contain)."""
    status = STATUS_CYCLE.get(str(before["status"]), "planned")
    ends_at = before["ends_at"]
    assert isinstance(ends_at, datetime)
    later = ends_at + timedelta(hours=1)
    description = str(before.get("description", ""))
    note1 = f"[{names[0]}: bring the spare radio] "
    note2 = f" [{names[1]}: rain expected after 15:00, finish an hour later]"

    await one.update("activity", activity_id, {"status": status})
    if "description" in before:
        # Each tablet saves its whole text box; update() writes only what changed, so both
        # notes survive the merge.
        await one.update("activity", activity_id, {"description": note1 + description})
        await two.update("activity", activity_id, {"description": description + note2})
    else:
        await one.update("activity", activity_id, {"description": note1 + note2})
    await two.update("activity", activity_id, {"ends_at": later})
    print(f"offline edits of activity {activity_id} ({before['title']}):")
    print(f"  tablet 1: status {before['status']} -> {status}; description: prepended a note")
    print(f"  tablet 2: ends_at {ends_at.isoformat()} -> {later.isoformat()}; "
          "description: appended a note")
    return {
        f"status {status} (tablet 1)": ("status", status),
        f"ends_at {later.isoformat()} (tablet 2)": ("ends_at", later),
        "description note of tablet 1": ("description", note1.strip()),
        "description note of tablet 2": ("description", note2.strip()),
    }


def _kept(
    merged: Mapping[str, object], expected: Mapping[str, tuple[str, object]]
) -> dict[str, bool]:
    kept = {}
    for what, (field, value) in expected.items():
        actual = merged.get(field)
        if field == "description":
            kept[what] = isinstance(actual, str) and str(value) in actual
        else:
            kept[what] = actual == value
    return kept


async def _until_equal(one: Project, two: Project, activity_id: str) -> None:
    """Wait until both tablets hold the same version of the activity."""
    changed = asyncio.Event()
    unsubscribe = [p.on_change(lambda _event: changed.set()) for p in (one, two)]
    try:
        while await one.heads(activity_id) != await two.heads(activity_id):
            await changed.wait()
            changed.clear()
    finally:
        for stop in unsubscribe:
            stop()


def _json(values: Mapping[str, object]) -> str:
    return json.dumps(values, indent=2, sort_keys=True, default=_plain)


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot show {type(value).__name__}")


def _short(heads: Sequence[bytes]) -> str:
    return ", ".join(h.hex()[:12] for h in heads)


if __name__ == "__main__":
    sys.exit(main())
