"""The store's keyed reads find every row the cross-entity rules need."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.conflict.cross import (
    ActivityRow,
    LocationRow,
    ProjectRows,
    RoleRow,
    Row,
    RowIndex,
    SummoningRow,
    cross_entity_conflicts,
    needed_rows,
)
from fieldsync.conflict.neighbourhood import Lookups, lookups_for
from tests.conflict.scenarios import examples
from tests.conflict.test_cross_rules import project_rows


def read(committed: ProjectRows, keys: Lookups) -> list[Row]:
    """What the store's SQL returns for ``keys``: rows matching any of them."""
    found: list[Row] = []
    for row in committed.rows():
        if (
            row.entity_id in keys.ids
            or (
                isinstance(row, SummoningRow)
                and (
                    row.activity_id in keys.summonings_by_activity
                    or row.role_id in keys.summonings_by_role
                    or row.user_id in keys.summonings_by_user
                )
            )
            or (isinstance(row, ActivityRow) and row.location_id in keys.activities_by_location)
        ):
            found.append(row)
    return found


def read_until_complete(committed: ProjectRows, centre: Row) -> tuple[dict[str, Row], int]:
    """The store's loop: read by the keys asked for until nothing new is asked."""
    known: dict[str, Row] = {}
    done = Lookups()
    rounds = 0
    while True:
        keys = lookups_for([centre.entity_id], [*known.values(), centre]) - done
        if not keys:
            return known, rounds
        rounds += 1
        done = done | keys
        for row in read(committed, keys):
            known[row.entity_id] = row


@settings(max_examples=examples(300), deadline=None)
@given(project_rows(), st.data())
def test_keyed_reads_find_the_conflicts_of_the_whole_project(
    committed: ProjectRows, data: st.DataObject
) -> None:
    """A changed entity (new or moved) sees the same conflicts from its keyed reads as from
    every row of the project."""
    everything = committed.rows()
    if not everything:
        return
    before = data.draw(st.sampled_from(everything))
    after = data.draw(_moved(before, committed))
    known, rounds = read_until_complete(committed, after)
    assert rounds <= 3
    view = {**known, after.entity_id: after}
    project = {row.entity_id: row for row in everything} | {after.entity_id: after}
    ids = [after.entity_id]
    assert cross_entity_conflicts(
        needed_rows(ProjectRows.of(view.values()), ids), ids
    ) == cross_entity_conflicts(ProjectRows.of(project.values()), ids)


def _moved(row: Row, rows: ProjectRows) -> st.SearchStrategy[Row]:
    """The same entity after a change: another activity, location, user or deleted flag."""
    if isinstance(row, SummoningRow):
        return st.builds(
            SummoningRow,
            st.just(row.entity_id),
            st.sampled_from(("act-1", "act-2", "act-3")),
            st.sampled_from(("role-1", None)),
            st.sampled_from(("user-1", "user-2", None)),
            st.just(row.starts_at),
            st.just(row.ends_at),
            st.booleans(),
            st.just(row.status),
        )
    if isinstance(row, ActivityRow):
        return st.builds(
            ActivityRow,
            st.just(row.entity_id),
            st.sampled_from(("loc-1", "loc-2", None)),
            st.just(row.starts_at),
            st.just(row.ends_at),
            st.booleans(),
            st.just(row.status),
        )
    if isinstance(row, LocationRow):
        return st.builds(LocationRow, st.just(row.entity_id), st.booleans())
    assert isinstance(row, RoleRow)
    return st.builds(RoleRow, st.just(row.entity_id), st.booleans())


@settings(max_examples=examples(300), deadline=None)
@given(project_rows(), st.data())
def test_the_row_index_needs_the_rows_needed_rows_needs(
    start: ProjectRows, data: st.DataObject
) -> None:
    """An index kept up to date row by row, as the rebuild keeps it, answers exactly as one
    built afresh from every current row (``needed_rows``)."""
    index = RowIndex()
    current: dict[str, Row] = {}
    for row in start.rows():
        index.put(row)
        current[row.entity_id] = row
    for _ in range(data.draw(st.integers(0, 6))):
        if not current:
            break
        moved = data.draw(
            _moved(data.draw(st.sampled_from(sorted(current.values(), key=_key))), start)
        )
        index.put(moved)
        current[moved.entity_id] = moved
        everything = ProjectRows.of(current.values())
        for entity_id in current:
            assert index.needed([entity_id]) == needed_rows(everything, [entity_id])
        assert index.needed(list(current)) == needed_rows(everything, list(current))


def _key(row: Row) -> str:
    return row.entity_id
