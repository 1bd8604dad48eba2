"""The difference between two texts as splices, to edit a collaborative Text in place.

Writing a new value into a text field as a new Text object replaces the field whole: two
people who each change one word of a description offline would end with two objects, and one
of them would be hidden. Applying only the difference, as splices on the existing object,
keeps every character nobody touched, so edits to different parts merge character by
character. This is what Automerge's ``updateText`` does (a Myers diff over the old and new
text); here too:

- The common prefix and suffix are cut first (one edit somewhere costs nothing more).
- The rest gets a Myers diff, which finds the fewest characters to delete and insert, so
  separate edits (a word changed at the start, another at the end) become separate
  splices and everything between them is kept.
- When the two texts differ in more than ``max_edits`` characters, a minimal diff would cost
  too much time (it grows with the product of size and difference): the whole stretch
  between the common prefix and suffix is replaced in one splice instead.

Indices and lengths count Unicode code points, which is what Python ``str`` indexing counts
and what ``Transaction.splice_text`` of automerge 0.2 (the Python binding, Rust automerge
0.7) takes: splicing at 2 in ``"aé😀b"`` inserts after the ``é``, and its length is 4 (UTF-8
would say 8 bytes, UTF-16 5 units). Automerge's JavaScript ``updateText`` diffs grapheme
clusters instead; this diff may cut between a character and a combining mark or emoji
modifier that follows it, which still yields exactly the new text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_MAX_EDITS", "Splice", "text_splices"]

DEFAULT_MAX_EDITS: Final = 1000
"""About 0.1 s of diffing in the worst case; beyond it the changed stretch is replaced."""


@dataclass(frozen=True, slots=True)
class Splice:
    """Delete ``delete`` code points at ``index``, then insert ``insert`` there."""

    index: int
    delete: int
    insert: str


def text_splices(old: str, new: str, *, max_edits: int = DEFAULT_MAX_EDITS) -> list[Splice]:
    """Splices that turn ``old`` into ``new``, to be applied in the order given.

    They come last one first, so each index is also an index into ``old``. No splice when
    the texts are equal.
    """
    if old == new:
        return []
    prefix = _common_prefix(old, new)
    suffix = _common_prefix(old[prefix:][::-1], new[prefix:][::-1])
    a = old[prefix : len(old) - suffix]
    b = new[prefix : len(new) - suffix]
    hunks = _differences(a, b, max_edits) if a and b else None
    if hunks is None:
        return [Splice(prefix, len(a), b)]
    return [
        Splice(prefix + a_start, a_end - a_start, b[b_start:b_end])
        for a_start, a_end, b_start, b_end in reversed(hunks)
    ]


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix, compared a block at a time (in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:  # invariant: a[:low] == b[:low]; the answer is <= high
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


Hunk = tuple[int, int, int, int]  # a[a_start:a_end] becomes b[b_start:b_end]


def _differences(a: str, b: str, max_edits: int) -> list[Hunk] | None:
    """The stretches where ``a`` and ``b`` differ, in order, from a minimal edit script
    (Myers 1986, greedy forward search); None when more than ``max_edits`` edits are needed.
    """
    n, m = len(a), len(b)
    offset = max_edits + 1
    v = [0] * (2 * max_edits + 3)  # v[offset + k]: furthest x reached on diagonal k = x - y
    trace: list[list[int]] = []  # v over diagonals -d..d after each step d, to walk back
    for d in range(min(max_edits, n + m) + 1):
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[offset + k - 1] < v[offset + k + 1]):
                x = v[offset + k + 1]  # down: insert b[y - 1]
            else:
                x = v[offset + k - 1] + 1  # right: delete a[x - 1]
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            v[offset + k] = x
            if x >= n and y >= m:
                trace.append(v[offset - d : offset + d + 1])
                return _hunks(_edits(trace, n, m))
        trace.append(v[offset - d : offset + d + 1])
    return None


def _edits(trace: list[list[int]], n: int, m: int) -> list[Hunk]:
    """Walk the search back from (n, m): each edit as the stretch it covers, first first.

    An edit either deletes one character of ``a`` or inserts one of ``b``; step ``d`` of the
    search chose between the two from the furthest points reached at step ``d - 1``
    (``trace[d - 1]``, diagonals ``-(d - 1)..d - 1``), and that choice is made again here.
    """
    x, y = n, m
    edits: list[Hunk] = []
    for d in range(len(trace) - 1, 0, -1):
        before = trace[d - 1]
        k = x - y
        down = k == -d or (k != d and before[k - 1 + d - 1] < before[k + 1 + d - 1])
        k_from = k + 1 if down else k - 1
        x_from = before[k_from + d - 1]
        y_from = x_from - k_from
        if down:
            edits.append((x_from, x_from, y_from, y_from + 1))  # insert b[y_from]
        else:
            edits.append((x_from, x_from + 1, y_from, y_from))  # delete a[x_from]
        x, y = x_from, y_from
    edits.reverse()
    return edits


def _hunks(edits: list[Hunk]) -> list[Hunk]:
    """Join edits with no common character between them into one stretch each."""
    hunks: list[Hunk] = []
    for a_start, a_end, b_start, b_end in edits:
        if hunks and hunks[-1][1] == a_start and hunks[-1][3] == b_start:
            hunks[-1] = (hunks[-1][0], a_end, hunks[-1][2], b_end)
        else:
            hunks.append((a_start, a_end, b_start, b_end))
    return hunks
