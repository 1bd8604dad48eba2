"""Documents touched only through contained calls; changes applied to a checked fork."""

import pytest
from automerge.core import ROOT, Document, ScalarType

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.automerge_format.documents import (
    AutomergeError,
    ChangesNotAppliedError,
    apply_changes,
    contained,
    document_heads,
    expected_heads,
    load_document,
)


def _edited(doc: Document, key: str, value: str) -> bytes:
    with doc.transaction() as tx:
        tx.put(ROOT, key, ScalarType.Str, value)
    change = doc.get_last_local_change()
    assert change is not None
    return bytes(change.bytes)


def test_an_exception_of_the_binding_becomes_automerge_error() -> None:
    with pytest.raises(AutomergeError):
        load_document(b"\x85\x6f\x4a\x83 not a document")


def test_a_panic_is_contained_and_other_base_exceptions_pass() -> None:
    class PanicException(BaseException):  # the binding's panic type, by name
        pass

    def panics() -> None:
        raise PanicException("index out of bounds")

    with pytest.raises(AutomergeError, match="panicked: index out of bounds"):
        contained(panics)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        contained(interrupted)


def test_apply_changes_leaves_the_original_and_ends_at_the_predicted_heads() -> None:
    author = Document()
    first = parse_change(_edited(author, "title", "a"))
    second = parse_change(_edited(author, "title", "b"))
    base = apply_changes(None, [first])
    result = apply_changes(base, [second])
    assert document_heads(base) == [first.hash]
    assert (
        frozenset(document_heads(result)) == expected_heads([first.hash], [second]) == {second.hash}
    )
    assert result.get(ROOT, "title") is not None


def test_a_change_whose_dependency_is_absent_is_reported_not_dropped() -> None:
    author = Document()
    parse_change(_edited(author, "title", "a"))
    orphan = parse_change(_edited(author, "title", "b"))
    with pytest.raises(ChangesNotAppliedError, match=orphan.hash.hex()):
        apply_changes(None, [orphan])
