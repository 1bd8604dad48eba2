"""A minimal protocol client for tests: real WebSocket, the shared codec, no SDK logic."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TypeVar

from automerge.core import Document
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.automerge_format.documents import apply_changes, load_document
from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import (
    Changes,
    ClientMessage,
    ConflictRecord,
    Conflicts,
    Error,
    Hello,
    ProjectCursor,
    ProjectError,
    ServerMessage,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    Synced,
    Welcome,
)

M = TypeVar("M")


@dataclass
class ProjectReplica:
    """What a client holds of a project: documents and the cursor they are current to."""

    cursor: int = 0
    documents: dict[str, Document] = field(default_factory=dict)
    seen_seqs: list[int] = field(default_factory=list)
    conflicts: dict[str, ConflictRecord] = field(default_factory=dict)

    def apply(self, message: Changes) -> None:
        for record in message.changes:
            assert record.seq == self.cursor + 1, (record.seq, self.cursor)
            self.cursor = record.seq
            self.seen_seqs.append(record.seq)
            self.documents[record.entity_id] = apply_changes(
                self.documents.get(record.entity_id), [parse_change(record.change)]
            )

    def apply_conflicts(self, message: Conflicts) -> None:
        for record in message.conflicts:
            if record.status == "removed":
                self.conflicts.pop(record.conflict_id, None)
            else:
                self.conflicts[record.conflict_id] = record

    def heads(self) -> dict[str, list[bytes]]:
        return {e: sorted(d.get_heads()) for e, d in self.documents.items()}


class SyncClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.replicas: dict[str, ProjectReplica] = {}
        self.inbox: list[ServerMessage] = []

    @classmethod
    async def connect(cls, base: str) -> SyncClient:
        ws = await connect(f"ws://{base}/sync", compression=None, max_size=None)
        return cls(ws)

    async def send(self, message: ClientMessage) -> None:
        await self.ws.send(encode(message))

    async def receive(self, within: float = 5.0) -> ServerMessage:
        frame = await asyncio.wait_for(self.ws.recv(), within)
        return decode_server(frame)

    async def expect(self, kind: type[M], within: float = 5.0) -> M:
        """The next message; it must be of ``kind``."""
        message = await self.receive(within)
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    async def hello(self, token: str, projects: list[ProjectCursor] | None = None) -> Welcome:
        await self.send(Hello((1,), token, f"test-{uuid.uuid4().hex[:8]}", tuple(projects or ())))
        return await self.expect(Welcome)

    async def sync_until_synced(self, project_id: str, within: float = 10.0) -> ProjectReplica:
        """Consume snapshot and catch-up messages of a project until Synced."""
        self.replicas.setdefault(project_id, ProjectReplica())
        while True:
            message = await self.receive(within)
            if self.absorb(message) and isinstance(message, Synced):
                replica = self.replicas[project_id]  # a snapshot replaces the replica
                assert message.project_id == project_id
                assert message.cursor == replica.cursor
                return replica

    def absorb(self, message: ServerMessage) -> bool:
        """Apply a project message to its replica; False for anything else (kept in inbox)."""
        if isinstance(message, SnapshotBegin):
            self.replicas[message.project_id] = ProjectReplica()
        elif isinstance(message, SnapshotChunk):
            replica = self.replicas[message.project_id]
            for entity in message.entities:
                replica.documents[entity.entity_id] = load_document(entity.document)
        elif isinstance(message, SnapshotEnd):
            self.replicas[message.project_id].cursor = message.cursor
        elif isinstance(message, Changes):
            self.replicas.setdefault(message.project_id, ProjectReplica()).apply(message)
        elif isinstance(message, Conflicts):
            self.replicas.setdefault(message.project_id, ProjectReplica()).apply_conflicts(message)
        elif isinstance(message, Synced):
            pass
        else:
            self.inbox.append(message)
            return False
        return True

    async def receive_changes_until(self, project_id: str, seq: int, within: float = 5.0) -> None:
        self.replicas.setdefault(project_id, ProjectReplica())
        while self.replicas[project_id].cursor < seq:  # a snapshot replaces the replica
            self.absorb(await self.receive(within))

    async def next_unabsorbed(self, within: float = 5.0) -> ServerMessage:
        """The next message that is not project data (push results, errors)."""
        while not self.inbox:
            self.absorb(await self.receive(within))
        return self.inbox.pop(0)

    async def read_until_closed(self, within: float = 10.0) -> tuple[list[ServerMessage], int]:
        """Every message until the server closes; those messages and the close code."""
        messages: list[ServerMessage] = []
        try:
            while True:
                messages.append(await self.receive(within))
        except ConnectionClosed as closed:
            received = closed.rcvd
        if received is None:
            raise AssertionError("the server closed without a close frame")
        return messages, received.code

    async def close(self) -> None:
        await self.ws.close()


__all__ = ["Error", "ProjectError", "SyncClient"]
