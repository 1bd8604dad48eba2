"""Realistic entity values for tests and benchmarks, written through ``model.writer``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def plan_values(name: str = "Spring survey") -> dict[str, object]:
    return {"name": name, "description": "Field survey of the northern sites"}


def location_values(index: int = 0) -> dict[str, object]:
    return {
        "name": f"Site {index}",
        "address": f"{index} Quarry Road",
        "coordinates": {"latitude": 45.0 + index / 100, "longitude": 7.5 - index / 100},
    }


def activity_values(
    plan_id: str, location_id: str | None = None, day: int = 0, title: str = "Core sampling"
) -> dict[str, object]:
    values: dict[str, object] = {
        "plan_id": plan_id,
        "title": title,
        "description": "Take three cores at each marked point.",
        "tasks": [
            {"title": "Calibrate drill", "done": False},
            {"title": "Label jars", "done": True},
        ],
        "starts_at": START + timedelta(days=day),
        "ends_at": START + timedelta(days=day, hours=6),
        "status": "planned",
    }
    if location_id is not None:
        values["location_id"] = location_id
    return values


def role_values(name: str = "Geologist") -> dict[str, object]:
    return {"name": name, "skills": ["drilling", "sampling"]}


def summoning_values(activity_id: str, role_id: str, day: int = 0) -> dict[str, object]:
    return {
        "activity_id": activity_id,
        "role_id": role_id,
        "starts_at": START + timedelta(days=day),
        "ends_at": START + timedelta(days=day, hours=6),
        "status": "proposed",
    }


def membership_values(user_id: str) -> dict[str, object]:
    return {"user_id": user_id, "role_ids": [], "display_name": "Ana Field"}
