"""Writing read-model rows: the SQL side of ``model.projections``.

Rows are a pure function of an entity's document plus the seq of its latest change, so the
append path and the rebuild write them through this one function and get the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any
from uuid import UUID

from fieldsync.model.projections import PROJECTIONS, Projection
from fieldsync.store.driver import translated


@cache
def _upsert_sql(entity_type: str) -> str:
    projection: Projection = PROJECTIONS[entity_type]
    columns = ("project_id", "entity_id", *projection.columns, "last_seq")
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns[2:])
    return (
        f"INSERT INTO {projection.table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT (project_id, entity_id) DO UPDATE SET {updates}"
    )


def read_model_row(
    project_id: UUID, entity_type: str, entity_id: str, values: Mapping[str, object], last_seq: int
) -> tuple[object, ...]:
    """The full row for ``entity_type``'s table, in the column order of ``_upsert_sql``."""
    return (project_id, entity_id, *PROJECTIONS[entity_type].row(dict(values)), last_seq)


@translated("writing read models")
async def upsert_read_models(
    conn: Any, rows_by_type: Mapping[str, Sequence[tuple[object, ...]]]
) -> None:
    """Insert or replace rows, one statement per entity type, in a stable type order."""
    for entity_type in sorted(rows_by_type):
        rows = rows_by_type[entity_type]
        if rows:
            await conn.executemany(_upsert_sql(entity_type), rows)


def read_model_tables() -> tuple[str, ...]:
    """Every entity read-model table, for rebuilds and comparisons."""
    return tuple(sorted(p.table for p in PROJECTIONS.values()))
