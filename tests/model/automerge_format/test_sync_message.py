"""changes_message: raw changes applied in place through receive_sync_message."""

import hashlib

from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState, extract

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.automerge_format.sync_message import changes_message

PHOTO = b"".join(hashlib.sha256(bytes([n])).digest() for n in range(10))  # incompressible


def receive(doc: Document, changes: list[bytes]) -> None:
    doc.receive_sync_message(SyncState(), Message.decode(changes_message(changes)))


def sorted_heads(doc: Document) -> list[bytes]:
    return sorted(doc.get_heads())


def source() -> Document:
    """Two actors, a merge, a deflated change and text: the shapes a server receives."""
    a = Document(actor_id=b"\x0a" * 16)
    with a.transaction() as tx:
        tx.put(ROOT, "title", ScalarType.Str, "Crane lift")
        notes = tx.put_object(ROOT, "notes", ObjType.Text)
        tx.splice_text(notes, 0, 0, "check wind")  # type: ignore[attr-defined]  # not in the stub
    b = a.fork()
    b.set_actor(b"\x0b" * 16)
    with b.transaction() as tx:
        tx.put(ROOT, "long", ScalarType.Str, "x" * 300)
    with b.transaction() as tx:
        tx.put(ROOT, "photo", ScalarType.Bytes, PHOTO)
    with a.transaction() as tx:
        tx.splice_text(notes, 0, 0, "First: ")  # type: ignore[attr-defined]
    a.merge(b)
    with a.transaction() as tx:
        tx.put(ROOT, "done", ScalarType.Boolean, True)
    return a


def test_message_layout_is_the_one_the_library_encodes() -> None:
    change = source().get_changes([])[0].bytes
    message = changes_message([change])
    assert message[:6] == b"\x42\x00\x00\x00\x01" + bytes([len(change)])
    assert Message.decode(message).encode() == message


def test_empty_message_decodes_and_changes_nothing() -> None:
    assert changes_message([]) == b"\x42\x00\x00\x00\x00"
    doc = source()
    heads = sorted_heads(doc)
    receive(doc, [])
    assert sorted_heads(doc) == heads


def test_fresh_document_ends_identical_to_the_source() -> None:
    original = source()
    changes = [change.bytes for change in original.get_changes([])]
    assert any(data[8] == 2 for data in changes)  # a deflated one is among them
    assert any(len(data) > 127 for data in changes)  # a two-byte length prefix too
    copy = Document()
    receive(copy, changes)
    assert sorted_heads(copy) == sorted_heads(original)
    assert extract(copy) == extract(original)
    assert {parse_change(data).hash for data in changes} == {
        change.hash for change in copy.get_changes([])
    }


def test_order_within_the_message_does_not_matter() -> None:
    original = source()
    copy = Document()
    receive(copy, [change.bytes for change in reversed(original.get_changes([]))])
    assert sorted_heads(copy) == sorted_heads(original)
    assert extract(copy) == extract(original)


def test_receiving_changes_again_is_harmless() -> None:
    original = source()
    changes = [change.bytes for change in original.get_changes([])]
    receive(original, changes)
    copy = Document()
    receive(copy, changes[:2])
    receive(copy, changes)
    receive(copy, changes)
    assert sorted_heads(copy) == sorted_heads(original)
    assert extract(copy) == extract(original)
    assert len(copy.get_changes([])) == len(changes)


def test_change_with_missing_deps_waits_instead_of_applying() -> None:
    original = source()
    first, *rest = [change.bytes for change in original.get_changes([])]
    copy = Document()
    receive(copy, rest)
    assert copy.get_heads() == []  # held back, silently: callers must check the heads
    receive(copy, [first])
    assert sorted_heads(copy) == sorted_heads(original)
