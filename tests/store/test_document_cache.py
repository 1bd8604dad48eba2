"""The in-process document cache: bounded by entries and bytes, never going back in time."""

from __future__ import annotations

import uuid

from automerge.core import Document

from fieldsync.store.document_cache import CachedDocument, DocumentCache

PROJECT = uuid.uuid4()


def entry(version: int, size: int) -> CachedDocument:
    return CachedDocument(version, Document(), size)


def test_least_recently_used_entries_leave_first() -> None:
    cache = DocumentCache(capacity=2)
    cache.put(PROJECT, "a", entry(1, 10))
    cache.put(PROJECT, "b", entry(2, 10))
    assert cache.get(PROJECT, "a") is not None  # a is now the most recent
    cache.put(PROJECT, "c", entry(3, 10))
    assert cache.get(PROJECT, "b") is None
    assert cache.get(PROJECT, "a") is not None
    assert len(cache) == 2


def test_bytes_are_bounded_and_huge_documents_are_not_kept() -> None:
    cache = DocumentCache(capacity=100, max_bytes=100)
    cache.put(PROJECT, "a", entry(1, 60))
    cache.put(PROJECT, "b", entry(2, 30))
    cache.put(PROJECT, "c", entry(3, 30))  # 120 bytes: a goes
    assert cache.get(PROJECT, "a") is None
    assert cache.size_bytes == 60
    cache.put(PROJECT, "huge", entry(4, 101))
    assert cache.get(PROJECT, "huge") is None
    assert cache.size_bytes == 60


def test_an_older_version_never_replaces_a_newer_one() -> None:
    cache = DocumentCache()
    newer = entry(5, 10)
    cache.put(PROJECT, "a", newer)
    cache.put(PROJECT, "a", entry(4, 10))
    assert cache.get(PROJECT, "a") is newer
    replacement = entry(6, 25)
    cache.put(PROJECT, "a", replacement)
    assert cache.get(PROJECT, "a") is replacement
    assert cache.size_bytes == 25
