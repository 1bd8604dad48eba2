"""An entity document's change graph: ancestry, op ownership, and the live values of a key.

Automerge answers "which value wins at this key" (``get``), but conflicts need more: which
values are *live* at a key (not overwritten by an op that lists them as predecessors) and
which changes wrote them. An op is live as of heads ``S`` when it is in the past of ``S``
and no op in the past of ``S`` names it as a predecessor.

``live_ops`` walks back from ``S`` through the changes, newest start op first, reading each
change's root ops (``model.automerge_format.op_columns``). A change that puts the key, or deletes it
outright, replaced everything live at the key in its own past: the walk does not go below
it, and skips every change that lies in the past of one already found. A delete that keeps
a value (Automerge writes one when a client re-puts the winning value of a conflicted key:
it deletes only the losers) just adds its predecessors to the dead set and the walk goes on.
So the walk stays inside the region of concurrent changes.

The graph index is built from ``get_changes`` (linear in the history), which is why callers
build it only when a cheap check says a conflict may exist.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from automerge.core import ROOT, Document

from fieldsync.model.automerge_format.changes import ChangeFormatError
from fieldsync.model.automerge_format.documents import AutomergeError, contained
from fieldsync.model.automerge_format.op_columns import (
    ACTION_DELETE,
    ChangeOps,
    OpId,
    decode_change_ops,
    parse_op_id,
)

if TYPE_CHECKING:
    from automerge._automerge import Change  # not importable at run time


@dataclass(frozen=True, slots=True)
class ChangeInfo:
    """What the graph needs to know about one change."""

    hash: bytes
    actor: bytes
    seq: int
    start_op: int
    max_op: int
    deps: tuple[bytes, ...]
    data: bytes = b""

    def owns(self, op: OpId) -> bool:
        return op.actor == self.actor and self.start_op <= op.counter <= self.max_op


@dataclass(frozen=True, slots=True)
class LiveOp:
    """A value live at a key: the op that wrote it and the change that holds the op."""

    op: OpId
    change: ChangeInfo


class History:
    """The change graph of one document (every change it holds, in causal order)."""

    def __init__(self, infos: Sequence[ChangeInfo]) -> None:
        self._infos = {info.hash: info for info in infos}
        self._index: dict[bytes, int] = {}
        self._past: list[int] = []  # bit i set: change i is in the past of (or is) this one
        for info in infos:
            bits = 1 << len(self._past)
            for dep in info.deps:
                if dep in self._index:
                    bits |= self._past[self._index[dep]]
            self._index[info.hash] = len(self._past)
            self._past.append(bits)
        by_actor: dict[bytes, list[tuple[int, bytes]]] = {}
        for info in infos:
            by_actor.setdefault(info.actor, []).append((info.start_op, info.hash))
        self._by_actor = {actor: sorted(items) for actor, items in by_actor.items()}
        self._ops: dict[bytes, ChangeOps | None] = {}
        self._raw: dict[bytes, Change] = {}

    @classmethod
    def of(cls, doc: Document) -> History:
        """Index every change of ``doc``; raises AutomergeError if the binding fails."""
        changes = contained(lambda: doc.get_changes([]))
        infos = [
            ChangeInfo(c.hash, c.actor_id, c.seq, c.start_op, c.max_op, tuple(c.deps))
            for c in changes
        ]
        history = cls(_causal_order(infos))
        history._raw = {c.hash: c for c in changes}
        return history

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[ChangeInfo]:
        return iter(self._infos.values())

    def get(self, change: bytes) -> ChangeInfo | None:
        return self._infos.get(change)

    def change_of(self, op: OpId) -> ChangeInfo | None:
        """The change that made ``op``, if this document holds it."""
        items = self._by_actor.get(op.actor)
        if not items:
            return None
        at = bisect.bisect_right(items, (op.counter, b"\xff" * 33)) - 1
        if at < 0:
            return None
        info = self._infos[items[at][1]]
        return info if info.owns(op) else None

    def precedes(self, a: bytes, b: bytes) -> bool:
        """True when change ``a`` is in the causal past of change ``b`` (and is not ``b``)."""
        if a == b:
            return False
        return bool(self._past[self._index[b]] >> self._index[a] & 1)

    def concurrent(self, a: bytes, b: bytes) -> bool:
        """Neither change saw the other."""
        return a != b and not self.precedes(a, b) and not self.precedes(b, a)

    def within(self, change: bytes, heads: Iterable[bytes]) -> bool:
        """True when ``change`` is one of ``heads`` or in their past."""
        return any(change == h or self.precedes(change, h) for h in heads)

    def ops(self, change: bytes) -> ChangeOps | None:
        """The decoded root ops of ``change`` (None if it cannot be decoded)."""
        if change not in self._ops:
            info = self._infos.get(change)
            raw = self._raw.get(change)
            data = info.data if info and info.data else raw.bytes if raw is not None else b""
            try:
                self._ops[change] = decode_change_ops(data) if data else None
            except ChangeFormatError:
                self._ops[change] = None
        return self._ops[change]

    def live_ops(self, doc: Document, heads: Sequence[bytes], key: str) -> list[LiveOp]:
        """The ops live at root ``key`` as of ``heads``, winner first (Automerge order)."""
        barriers: list[ChangeInfo] = []  # changes that replaced everything older at the key
        candidates: list[LiveOp] = []
        dead: set[OpId] = set()
        queue: list[tuple[int, bytes]] = []
        seen: set[bytes] = set()

        def push(change: bytes) -> None:
            info = self._infos.get(change)
            if info is not None and change not in seen:
                seen.add(change)
                heapq.heappush(queue, (-info.start_op, change))

        for head in heads:
            push(head)
        while queue:
            _, change = heapq.heappop(queue)
            info = self._infos[change]
            if any(self.precedes(change, barrier.hash) for barrier in barriers):
                continue  # everything at this key up to here was replaced later
            ops = self.ops(change)
            if ops is None:  # undecodable: trust what the binding shows as of the change
                winner = winner_op(doc, key, [change])
                if winner is None or info.owns(winner):
                    if winner is not None:
                        candidates.append(LiveOp(winner, info))
                    barriers.append(info)
                    continue
            mine = [op for op in ops.root_ops if op.key == key] if ops is not None else []
            for op in mine:
                dead.update(p for p in op.pred if not info.owns(p))
            if mine:
                winner = winner_op(doc, key, [change])
                if winner is not None and info.owns(winner):
                    candidates.append(LiveOp(winner, info))
                if winner is None or any(op.action != ACTION_DELETE for op in mine):
                    barriers.append(info)
                    continue
            for dep in info.deps:
                push(dep)
        live = [item for item in candidates if item.op not in dead]
        return sorted(live, key=lambda item: item.op, reverse=True)


def winner_op(doc: Document, key: str, heads: Sequence[bytes]) -> OpId | None:
    """The op of the value winning at root ``key`` as of ``heads``; None if the key is absent
    (or unreadable)."""
    try:
        found = contained(lambda: doc.get(ROOT, key, heads=list(heads)))
    except AutomergeError:
        return None
    if found is None:
        return None
    return parse_op_id(found[1])


def _causal_order(infos: list[ChangeInfo]) -> list[ChangeInfo]:
    """``infos`` ordered so that every change follows its dependencies (stable otherwise).

    ``get_changes`` already returns them so; this only checks, and sorts if it ever did not.
    """
    known = {info.hash for info in infos}
    done: set[bytes] = set()
    for info in infos:
        if any(dep not in done and dep in known for dep in info.deps):
            break
        done.add(info.hash)
    else:
        return infos
    done = set()
    ordered: list[ChangeInfo] = []
    waiting = infos
    while waiting:
        still: list[ChangeInfo] = []
        for info in waiting:
            if all(dep in done or dep not in known for dep in info.deps):
                ordered.append(info)
                done.add(info.hash)
            else:
                still.append(info)
        if len(still) == len(waiting):
            raise AutomergeError("the change graph has a cycle")
        waiting = still
    return ordered
