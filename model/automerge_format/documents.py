"""Automerge documents built from untrusted bytes, touched only through contained calls.

The binding reports every error as a plain ``Exception`` and a Rust panic as
``pyo3_runtime.PanicException``, which derives from ``BaseException``: an ``except
Exception`` lets it escape and take the event loop down. Every call that may see bytes from
the network goes through :func:`contained`, which turns both into :class:`AutomergeError`.

Changes are applied to a *fork* of a document, never to the original: the in-place apply path
silently drops changes it cannot apply, so the result is checked against the heads the change
graph predicts before it replaces anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from automerge.core import Document, Message, SyncState

from fieldsync.model.automerge_format.changes import ChangeHeader
from fieldsync.model.automerge_format.sync_message import changes_message

T = TypeVar("T")


class AutomergeError(Exception):
    """The binding raised or panicked while handling a document or change."""


def _is_binding_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


def contained(call: Callable[[], T]) -> T:
    """Run one binding call; every failure of the binding becomes AutomergeError."""
    try:
        return call()
    except Exception as exc:
        raise AutomergeError(str(exc) or type(exc).__name__) from exc
    except BaseException as exc:
        if _is_binding_panic(exc):
            raise AutomergeError(f"automerge panicked: {exc}") from None
        raise


def load_document(data: bytes) -> Document:
    """Load saved bytes (optionally followed by change chunks); strict, unlike in-place apply."""
    return contained(lambda: Document.load(data))


def save_document(doc: Document) -> bytes:
    return contained(doc.save)


def document_heads(doc: Document) -> list[bytes]:
    return contained(doc.get_heads)


def expected_heads(heads: Iterable[bytes], applied: Sequence[ChangeHeader]) -> frozenset[bytes]:
    """The heads after applying ``applied`` (all deps satisfied) to a document with ``heads``.

    A head is a change nothing else depends on: the old heads plus the new changes, minus every
    hash some new change names as a dependency.
    """
    superseded = {dep for change in applied for dep in change.deps}
    candidates = set(heads) | {change.hash for change in applied}
    return frozenset(candidates - superseded)


class ChangesNotAppliedError(AutomergeError):
    """Automerge accepted the bytes but the document did not end where the change graph says."""


def apply_changes(doc: Document | None, changes: Sequence[ChangeHeader]) -> Document:
    """Return a new document: ``doc`` (or an empty one) with ``changes`` applied.

    ``changes`` must be in dependency order, none of them already in ``doc``, with every
    dependency present in ``doc`` or earlier in ``changes``; the caller checks that (the
    binding cannot tell whether a document holds a change, so callers track hashes).
    ``doc`` itself is never modified. The result is a fork with a fresh actor id: a caller
    that goes on editing it sets its own actor back with ``set_actor``.
    """
    before = document_heads(doc) if doc is not None else []
    target = contained(doc.fork) if doc is not None else Document()
    message = changes_message([change.data for change in changes])
    contained(lambda: target.receive_sync_message(SyncState(), Message.decode(message)))
    after = frozenset(document_heads(target))
    wanted = expected_heads(before, changes)
    if after != wanted:
        missing = sorted(h.hex() for h in wanted - after)
        raise ChangesNotAppliedError(
            "automerge did not apply the changes; heads missing after apply: "
            + ", ".join(missing[:5])
        )
    return target
