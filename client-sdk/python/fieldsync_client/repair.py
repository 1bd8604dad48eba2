"""What to send again when the server lacks dependencies of a pushed change.

The server answers ``missing_dependencies`` (with the missing hashes) when a pushed change
builds on changes it has never logged: an outbox row that was lost, or a server restored
from a backup that no longer has a change it once acknowledged. The local document still
holds those changes, so the push is repeated with them and everything they build on; the
server logs each change once, so the ones it already has cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["HistoryChange", "missing_hashes", "with_ancestors"]


@dataclass(frozen=True, slots=True)
class HistoryChange:
    hash: bytes
    deps: tuple[bytes, ...]
    change: bytes


def missing_hashes(details: Mapping[str, object]) -> frozenset[bytes] | None:
    """The hashes in a ``missing_dependencies`` rejection's details; None if unreadable."""
    listed = details.get("missing")
    if not isinstance(listed, list | tuple) or not listed:
        return None
    found: set[bytes] = set()
    for item in listed:
        if not isinstance(item, str) or len(item) != 64:
            return None
        try:
            found.add(bytes.fromhex(item))
        except ValueError:
            return None
    return frozenset(found)


def with_ancestors(
    history: Sequence[HistoryChange], wanted: frozenset[bytes]
) -> list[HistoryChange] | None:
    """The ``wanted`` changes and every change they depend on, in ``history``'s (causal)
    order; None when ``history`` does not hold all of them."""
    held = {change.hash for change in history}
    if not wanted <= held:
        return None
    needed = set(wanted)
    picked: list[HistoryChange] = []
    for change in reversed(history):
        if change.hash in needed:
            needed.update(change.deps)
            picked.append(change)
    picked.reverse()
    return picked
