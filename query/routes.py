"""The query API's route table, as data: it drives both the Starlette routes
(``live.query_http``) and the OpenAPI document (``query.openapi``), so neither can describe
an endpoint the other does not have."""

from __future__ import annotations

from dataclasses import dataclass

from msgspec import Struct

from fieldsync.query.items import ActivityPage, ConflictPage, MemberHealthPage, SummoningPage
from fieldsync.query.params import ActivityParams, ConflictParams, MemberParams, SummoningParams

API_PREFIX = "/api/v1"
OPENAPI_PATH = "/openapi.json"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ``GET`` of one project's read model: its parameters and its answer."""

    operation_id: str
    path: str
    summary: str
    params: type[Struct]
    response: type[Struct]
    tag: str = "read models"


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "list_activities",
        f"{API_PREFIX}/projects/{{project_id}}/activities",
        "Activities by place and time, sorted by (starts_at, entity_id)",
        ActivityParams,
        ActivityPage,
    ),
    Endpoint(
        "list_summonings",
        f"{API_PREFIX}/projects/{{project_id}}/summonings",
        "Who is summoned when, sorted by (starts_at, entity_id)",
        SummoningParams,
        SummoningPage,
    ),
    Endpoint(
        "list_conflicts",
        f"{API_PREFIX}/projects/{{project_id}}/conflicts",
        "Open (and recently resolved) conflicts, sorted by (opened_seq, conflict_id)",
        ConflictParams,
        ConflictPage,
    ),
    Endpoint(
        "list_member_health",
        f"{API_PREFIX}/projects/{{project_id}}/members/health",
        "Every member and the sync health of their clients, sorted by user_id",
        MemberParams,
        MemberHealthPage,
        tag="members",
    ),
)
