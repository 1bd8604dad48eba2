"""The admin and maintenance ports of the in-memory storage: accounts, users, projects and
members with the same rules and refusals as ``store.projects``, and the rebuild of read
models from the log through ``store.replay`` (as ``store.rebuild`` does on PostgreSQL).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TypeVar
from uuid import UUID, uuid4

from fieldsync.store.accounts import (
    LEVELS,
    AccountRow,
    MemberRow,
    ProjectDetail,
    ProjectRow,
    UserRow,
    check_level,
    check_limit,
    valid_email,
    valid_name,
)
from fieldsync.store.errors import (
    DuplicateEmail,
    NotAMember,
    UnknownAccount,
    UnknownUser,
)
from fieldsync.store.memory_state import (
    Account,
    Database,
    Member,
    Project,
    ReadModelRow,
    User,
    read_model_row,
)
from fieldsync.store.records import RebuildReport
from fieldsync.store.replay import ProjectRebuild, ReplayedEntity

__all__ = ["MemoryAdmin", "MemoryMaintenance"]

T = TypeVar("T")


class MemoryAdmin:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _account(self, account_id: UUID) -> Account:
        account = self._db.accounts.get(account_id)
        if account is None:
            raise UnknownAccount(account_id)
        return account

    def _user(self, user_id: UUID) -> User:
        user = self._db.users.get(user_id)
        if user is None:
            raise UnknownUser(user_id)
        return user

    async def create_account(self, name: str) -> UUID:
        self._db.check("creating an account")
        account_name = valid_name(name, "account")
        account = Account(uuid4(), account_name, self._db.now(), self._db.next_order())
        self._db.accounts[account.account_id] = account
        return account.account_id

    async def create_user(
        self, display_name: str, account_id: UUID | None = None, email: str | None = None
    ) -> UUID:
        self._db.check("creating a user")
        name = valid_name(display_name, "user")
        address = valid_email(email)
        if account_id is not None:
            self._account(account_id)
        if address is not None and any(
            u.email is not None and u.email.lower() == address.lower()
            for u in self._db.users.values()
        ):
            raise DuplicateEmail(address)
        user = User(uuid4(), name, address, account_id, self._db.now(), self._db.next_order())
        self._db.users[user.user_id] = user
        return user.user_id

    async def create_project(self, account_id: UUID, name: str) -> UUID:
        self._db.check("creating a project")
        project_name = valid_name(name, "project")
        self._account(account_id)
        project = Project(uuid4(), account_id, project_name, self._db.now(), self._db.next_order())
        self._db.projects[project.project_id] = project
        return project.project_id

    async def add_member(self, project_id: UUID, user_id: UUID, level: str) -> str | None:
        self._db.check("adding a member")
        check_level(level)
        project = self._db.project(project_id)
        self._user(user_id)
        member = project.members.get(user_id)
        if member is None:
            project.members[user_id] = Member(level, self._db.now(), self._db.next_order())
            return None
        previous, member.level = member.level, level
        return previous

    async def remove_member(self, project_id: UUID, user_id: UUID) -> str:
        self._db.check("removing a member")
        project = self._db.project(project_id)
        self._user(user_id)
        member = project.members.pop(user_id, None)
        if member is None:
            raise NotAMember(project_id, user_id)
        # Told once it is done, to every listener, as a NOTIFY sent in the transaction.
        loop = asyncio.get_running_loop()
        for listener in list(self._db.removal_listeners):
            loop.call_soon(listener, project_id, user_id)
        return member.level

    async def require_user(self, user_id: UUID) -> None:
        self._db.check("looking the user up")
        self._user(user_id)

    async def list_accounts(
        self, *, after: UUID | None = None, limit: int | None = None
    ) -> list[AccountRow]:
        self._db.check("listing accounts")
        check_limit(limit)
        if after is not None:
            self._account(after)
        accounts = self._db.accounts.values()
        rows = [
            AccountRow(
                a.account_id,
                a.name,
                a.created_at,
                sum(1 for p in self._db.projects.values() if p.account_id == a.account_id),
                sum(1 for u in self._db.users.values() if u.account_id == a.account_id),
            )
            for a in _since(accounts, after, lambda a: a.account_id, lambda a: a.order, limit)
        ]
        return rows

    async def list_users(
        self,
        *,
        account_id: UUID | None = None,
        after: UUID | None = None,
        limit: int | None = None,
    ) -> list[UserRow]:
        self._db.check("listing users")
        check_limit(limit)
        if account_id is not None:
            self._account(account_id)
        if after is not None:
            self._user(after)
        users = [
            u
            for u in self._db.users.values()
            if account_id is None or u.account_id == account_id
        ]
        return [
            UserRow(u.user_id, u.name, u.email, u.account_id, u.created_at)
            for u in _since(users, after, lambda u: u.user_id, lambda u: u.order, limit)
        ]

    async def list_projects(
        self,
        *,
        account_id: UUID | None = None,
        after: UUID | None = None,
        limit: int | None = None,
    ) -> list[ProjectRow]:
        self._db.check("listing projects")
        check_limit(limit)
        if account_id is not None:
            self._account(account_id)
        if after is not None:
            self._db.project(after)
        chosen = [
            p
            for p in self._db.projects.values()
            if account_id is None or p.account_id == account_id
        ]
        return [
            ProjectRow(p.project_id, p.name, p.account_id, p.created_at, p.head, len(p.members))
            for p in _since(chosen, after, lambda p: p.project_id, lambda p: p.order, limit)
        ]

    async def show_project(self, project_id: UUID) -> ProjectDetail:
        self._db.check("reading a project")
        project = self._db.project(project_id)
        account = self._account(project.account_id)
        members = dict.fromkeys(LEVELS, 0)
        for member in project.members.values():
            members[member.level] += 1
        return ProjectDetail(
            project.project_id,
            project.name,
            project.account_id,
            account.name,
            project.created_at,
            project.head,
            members,
        )

    async def list_members(
        self, project_id: UUID, *, after: UUID | None = None, limit: int | None = None
    ) -> list[MemberRow]:
        self._db.check("listing members")
        check_limit(limit)
        project = self._db.project(project_id)
        if after is not None and after not in project.members:
            raise NotAMember(project_id, after)
        in_order = sorted(project.members.items(), key=lambda item: item[1].order)
        rows = []
        for user_id, member in _since(
            in_order, after, lambda item: item[0], lambda item: item[1].order, limit
        ):
            user = self._user(user_id)
            rows.append(MemberRow(user_id, user.name, user.email, member.level, member.added_at))
        return rows


def _since(
    rows: Iterable[T],
    after: UUID | None,
    key: Callable[[T], UUID],
    order: Callable[[T], int],
    limit: int | None,
) -> Iterator[T]:
    """Rows in creation order after the one whose key is ``after``, at most ``limit``."""
    ordered = sorted(rows, key=order)
    start = next((order(r) for r in ordered if key(r) == after), 0) if after else 0
    taken = 0
    for row in ordered:
        if order(row) <= start:
            continue
        if limit is not None and taken >= limit:
            return
        taken += 1
        yield row


class MemoryMaintenance:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def migrate(self) -> list[int]:
        """Nothing to migrate: the state is made by this code."""
        self._db.check("migrating the database")
        return []

    async def check_schema(self) -> None:
        self._db.check("checking the database schema")

    async def rebuild_read_models(self, project_id: UUID | None) -> RebuildReport:
        self._db.check("rebuilding read models")
        report = RebuildReport()
        chosen = sorted(self._db.projects) if project_id is None else [project_id]
        for project in chosen:
            async with self._db.lock(project):
                self._rebuild_project(self._db.project(project), report)
        return report

    def _rebuild_project(self, project: Project, report: RebuildReport) -> None:
        cached_heads = {key: set(entity.heads) for key, entity in project.entities.items()}
        rebuild = ProjectRebuild(report, cached_heads)
        read_models: dict[str, dict[str, ReadModelRow]] = defaultdict(dict)
        for entity in _replay(project):
            projected = rebuild.entity(entity)
            if projected is not None:
                read_models[projected.entity_type][projected.entity_id] = read_model_row(
                    projected.entity_type, projected.values, projected.last_seq
                )
        writes = rebuild.finish(dict(project.conflicts))
        # Everything is computed: now replace, as the rebuild's transaction commits.
        project.read_models = read_models
        for entity_id, ops in rebuild.op_counts.items():
            current = project.entities[entity_id]
            if current.op_count != ops:
                updated = replace(current, op_count=ops)
                project.entities[entity_id] = self._db.entities[entity_id] = updated
        project.write_conflicts(writes, project.head)


def _replay(project: Project) -> Iterator[ReplayedEntity]:
    """Each entity's logged changes in seq order, entities in id order."""
    by_entity: dict[str, ReplayedEntity] = {}
    for entry in project.log:
        change = entry.change
        replayed = by_entity.get(change.entity_id)
        if replayed is None:
            replayed = by_entity[change.entity_id] = ReplayedEntity(
                change.entity_type, change.entity_id
            )
        replayed.seqs.append(change.seq)
        replayed.senders.append(entry.sender)
        replayed.changes.append(change.change)
    for entity_id in sorted(by_entity):
        yield by_entity[entity_id]

