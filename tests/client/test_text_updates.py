"""Setting a text field edits its text in place; replacing it whole is a separate call.

``Project.update(..., {"description": new})`` writes the difference between the current text
and ``new`` as splices (``model.text_diff`` through ``model.writer.update_entity``), so two
people editing different parts of a description offline both keep their edits.
``Project.replace_text`` puts a new text object in the field. Splice indices count Unicode
code points, so non-ASCII text (accents, emoji, combining marks) is covered throughout.
"""

from __future__ import annotations

import uuid

import asyncpg
from automerge.core import ROOT, Document, ObjType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldsync.model.text_diff import Splice, text_splices
from fieldsync.model.writer import NoChange, create_entity, replace_text, update_entity
from tests.client.conftest import OnlineFactory, RestartableServer
from tests.client.helpers import head_seq, server_documents, until, values_of
from tests.entities import activity_values, plan_values

# Every kind of code point, weighted towards the ones that differ between code points,
# UTF-16 units and UTF-8 bytes, and towards repeats (which give a diff many choices).
CHARS = st.one_of(
    st.sampled_from(["a", "b", " ", "é", "e\u0301", "😀", "👍🏽", "中", "\n"]),
    st.characters(exclude_categories=["Cs"]),  # any code point a str can hold in UTF-8
)
TEXTS = st.lists(CHARS, max_size=40).map("".join)
FENCE = "|"  # kept out of the edited parts below, so that they cannot run into each other
PARTS = TEXTS.map(lambda text: text.replace(FENCE, ""))


def _description(doc: Document) -> tuple[bytes, str]:
    """The description's Text object id and its text."""
    found = doc.get(ROOT, "description")
    assert found is not None
    assert found[0] == ObjType.Text
    return found[1], doc.text(found[1])


def _same_object(doc: Document, before: list[bytes]) -> bool:
    """Whether the description is the object it was at ``before`` (object ids are compared
    within one document state: their bytes depend on the document's actor table)."""
    then = doc.get(ROOT, "description", heads=before)
    assert then is not None
    return then[1] == _description(doc)[0]


def _activity(description: str, actor: int = 1) -> Document:
    doc, _ = create_entity("activity", {**activity_values("plan-1"), "description": description})
    doc.set_actor(bytes([actor]) * 16)
    return doc


def _fork(doc: Document, actor: int) -> Document:
    fork = doc.fork()
    fork.set_actor(bytes([actor]) * 16)
    return fork


def _apply(text: str, splices: list[Splice]) -> str:
    for s in splices:
        text = text[: s.index] + s.insert + text[s.index + s.delete :]
    return text


def test_splice_text_counts_code_points() -> None:
    """What the binding's splice_text indexes: code points, not UTF-16 units or bytes."""
    doc = _activity("aé😀b")
    text, value = _description(doc)
    assert doc.length(text) == len(value) == 4  # UTF-16 would be 5, UTF-8 8
    with doc.transaction() as tx:
        tx.splice_text(text, 3, 0, "|")  # type: ignore[attr-defined]
        tx.splice_text(text, 1, 1, "e\u0301")  # type: ignore[attr-defined]
    assert doc.text(text) == "ae\u0301😀|b"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXTS, TEXTS)
def test_the_splices_turn_one_text_into_the_other(old: str, new: str) -> None:
    splices = text_splices(old, new)
    assert _apply(old, splices) == new
    assert (splices == []) == (old == new)
    # Minimal: nothing is deleted and inserted again (a common character kept in place).
    kept = len(old) - sum(s.delete for s in splices)
    assert kept == _longest_common_subsequence(old, new)
    bounded = text_splices(old, new, max_edits=2)  # too many differences: one splice
    assert _apply(old, bounded) == new


def _longest_common_subsequence(a: str, b: str) -> int:
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if char == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXTS, TEXTS)
def test_update_sets_any_text_on_the_same_object(old: str, new: str) -> None:
    doc = _activity(old)
    before = doc.get_heads()
    try:
        update_entity(doc, "activity", {"description": new})
    except NoChange:
        assert old == new
    assert _description(doc)[1] == new
    assert _same_object(doc, before)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PARTS, PARTS, PARTS, PARTS)
def test_updates_of_different_parts_merge(
    left: str, new_left: str, right: str, new_right: str
) -> None:
    """Two devices set the whole description, each having changed its own part."""
    base = _activity(left + FENCE + right)
    one, two = _fork(base, 2), _fork(base, 3)
    for doc, value in ((one, new_left + FENCE + right), (two, left + FENCE + new_right)):
        if value != left + FENCE + right:
            update_entity(doc, "activity", {"description": value})
    one.merge(two)
    two.merge(one)
    assert _description(one)[1] == _description(two)[1] == new_left + FENCE + new_right


def test_a_field_with_no_text_object_gets_one() -> None:
    doc, _ = create_entity("activity", {**activity_values("plan-1"), "description": None})
    assert doc.get(ROOT, "description") is None
    update_entity(doc, "activity", {"description": "Café ☕"})
    assert _description(doc)[1] == "Café ☕"
    before = doc.get_heads()
    update_entity(doc, "activity", {"description": "Café ☕ at 9"})
    assert _description(doc)[1] == "Café ☕ at 9"
    assert _same_object(doc, before)


def test_replace_text_puts_a_new_object() -> None:
    doc = _activity("Take three cores.")
    before = doc.get_heads()
    replace_text(doc, "activity", "description", "Take four cores. 😀")
    assert _description(doc)[1] == "Take four cores. 😀"
    assert not _same_object(doc, before)
    # Concurrent edits of the old object no longer show: the field holds the new one.
    base = _activity("Take three cores.")
    one, two = _fork(base, 2), _fork(base, 3)
    replace_text(one, "activity", "description", "Replaced")
    update_entity(two, "activity", {"description": "Take three cores. Edited."})
    one.merge(two)
    assert _description(one)[1] == "Replaced"


# --- two SDK clients and a real server -------------------------------------------------------


async def test_two_clients_update_one_description_offline_and_both_edits_survive(
    server: RestartableServer, project: uuid.UUID, online: OnlineFactory, pool: asyncpg.Pool
) -> None:
    client_a, a, token, _ = await online(server.url, project, "a")
    client_b, b, _, _ = await online(server.url, project, "b")
    plan = await a.create("plan", plan_values())
    text = "Take three cores at the café, then photograph each 🪨."
    activity = await a.create("activity", {**activity_values(plan), "description": text})
    await client_a.wait_synced(10)
    await until(lambda: b.cursor == a.cursor, what="b to receive the activity")

    await server.stop()
    await until(lambda: not client_a.status.online and not client_b.status.online, what="offline")
    # Each app shows the text in a box and saves the whole box: update, not splices.
    assert await a.update(
        "activity", activity, {"description": text.replace("three", "four ⛏")}
    )
    assert await b.update(
        "activity", activity, {"description": text.replace("each 🪨", "every 🪨 twice")}
    )
    assert await b.update(  # and once more, on top of its own edit
        "activity", activity, {"description": "Ñote: " + text.replace("each 🪨", "every 🪨 twice")}
    )
    await server.start()
    await client_a.wait_synced(15)
    await client_b.wait_synced(15)
    head = await head_seq(pool, project)
    await until(lambda: a.cursor == b.cursor == head, what="both clients at the log head")

    merged = "Ñote: Take four ⛏ cores at the café, then photograph every 🪨 twice."
    values = await a.get("activity", activity)
    assert values["description"] == merged
    assert await b.get("activity", activity) == values
    on_server = (await server_documents(server.base, token, project))[activity]
    assert values_of("activity", on_server)["description"] == merged
    assert await a.conflicts() == await b.conflicts() == []


async def test_replace_text_from_the_sdk_replaces_the_object(
    server: RestartableServer, project: uuid.UUID, online: OnlineFactory
) -> None:
    client_a, a, token, _ = await online(server.url, project, "a")
    plan = await a.create("plan", plan_values())
    activity = await a.create("activity", {**activity_values(plan), "description": "Old text"})
    created = await a.heads(activity)

    assert await a.replace_text("activity", activity, "description", "Brand new 😀")
    assert (await a.get("activity", activity))["description"] == "Brand new 😀"
    await client_a.wait_synced(10)
    doc = (await server_documents(server.base, token, project))[activity]
    assert _description(doc)[1] == "Brand new 😀"
    assert not _same_object(doc, created)
    assert doc.text(doc.get(ROOT, "description", heads=created)[1]) == "Old text"  # type: ignore[index]
