"""When each commit became known to this process, until its changes were fanned out.

Pure bookkeeping for the commit-to-fan-out histogram. A commit made in this process is
marked when its transaction committed (``local``); another process's commit is marked when
its pointer arrived here (``remote``: by NOTIFY or the periodic head check), because its
commit time is not known here. A feed reports the head it dispatched, and every mark up to
that seq becomes one latency. Marks of projects nobody watches are never taken back, so
both the marks per project and the projects are bounded, oldest dropped first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from uuid import UUID

LOCAL = "local"
REMOTE = "remote"


class FanoutClock:
    def __init__(self, max_projects: int = 10_000, max_marks: int = 1_000) -> None:
        self._max_projects = max_projects
        self._max_marks = max_marks
        self._marks: OrderedDict[UUID, deque[tuple[int, float, str]]] = OrderedDict()

    def mark(self, project_id: UUID, seq: int, now: float, source: str) -> None:
        """Seq ``seq`` of the project is known since ``now`` (the earliest mark wins)."""
        marks = self._marks.get(project_id)
        if marks is None:
            marks = self._marks[project_id] = deque(maxlen=self._max_marks)
            if len(self._marks) > self._max_projects:
                self._marks.popitem(last=False)
        elif marks and marks[-1][0] >= seq:
            return
        marks.append((seq, now, source))

    def dispatched(self, project_id: UUID, head: int, now: float) -> list[tuple[str, float]]:
        """Everything up to ``head`` went out: (source, seconds since its mark) per mark."""
        marks = self._marks.get(project_id)
        done: list[tuple[str, float]] = []
        while marks and marks[0][0] <= head:
            _, since, source = marks.popleft()
            done.append((source, max(0.0, now - since)))
        if marks is not None and not marks:
            del self._marks[project_id]
        return done

    def __len__(self) -> int:
        return sum(len(marks) for marks in self._marks.values())
