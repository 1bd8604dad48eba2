"""A demo account with a realistic project, so a newcomer can connect a client at once.

``create_demo`` makes the server-managed rows (an account, the project "Alpine survey 2027",
a lead and two specialists as its members), then writes the project's content the way a
client would: as Automerge changes appended to the change log, sent by the lead. It works
through the storage ports, so it runs on any storage. The read
models are therefore filled by the same code path as for any other push, and every client
that opens the project gets it through its snapshot.

What gets written is decided by the pure :func:`demo_entities`; every run makes new ids, so
running it twice makes a second, independent demo.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.errors import StoreError
from fieldsync.store.ports import Storage
from fieldsync.store.records import Accepted

PROJECT_NAME = "Alpine survey 2027"
ACCOUNT_NAME = "Demo: Alpine Field Research"
TIMEZONE = "Europe/Zurich"
FIRST_DAY = date(2027, 6, 7)  # a Monday; the campaign runs three weeks
_LOCAL = timezone(timedelta(hours=2))  # Central European Summer Time, all campaign long


@dataclass(frozen=True, slots=True)
class DemoPerson:
    """Who the demo creates: name, level, and the project role (by key) they hold."""

    name: str
    email_local: str
    level: str
    role: str


PEOPLE = (
    DemoPerson("Marta Keller", "marta.keller", "lead", "glaciologist"),
    DemoPerson("Jonas Weber", "jonas.weber", "specialist", "geologist"),
    DemoPerson("Lena Roth", "lena.roth", "specialist", "surveyor"),
)


@dataclass(frozen=True, slots=True)
class DemoUser:
    user_id: uuid.UUID
    name: str
    email: str
    level: str


@dataclass(frozen=True, slots=True)
class Demo:
    account_id: uuid.UUID
    project_id: uuid.UUID
    project_name: str
    users: tuple[DemoUser, ...]
    counts: Mapping[str, int]  # entities written, by type
    head_seq: int


@dataclass(frozen=True, slots=True)
class SeedEntity:
    entity_type: str
    entity_id: str
    values: Mapping[str, object]


# --- the content (pure) ---------------------------------------------------------------

_ROLES = {
    "glaciologist": ("Glaciologist", ["ice radar", "ablation stakes", "mass balance"]),
    "geologist": ("Geologist", ["core drilling", "sediment logging", "sampling"]),
    "surveyor": ("Surveyor", ["GNSS", "total station", "drone photogrammetry"]),
    "guide": ("Mountain guide", ["rope rescue", "glacier travel", "first aid"]),
}

# key: (name, address, latitude, longitude)
_LOCATIONS = {
    "camp": ("Base camp Arolla", "Route d'Arolla, 1986 Arolla", 46.0247, 7.4822),
    "moraine": ("Pigne d'Arolla lateral moraine", None, 46.0012, 7.4478),
    "glacier": ("Tsijiore Nouve glacier tongue", None, 46.0035, 7.4652),
    "lake": ("Lac Bleu", "Above La Gouille, 1985 Evolène", 46.0661, 7.4958),
    "hut": ("Cabane des Vignettes", "3160 m, 1986 Arolla", 45.9856, 7.4453),
}


@dataclass(frozen=True, slots=True)
class _Activity:
    day: int  # days after FIRST_DAY
    start: int  # local hour
    hours: int
    title: str
    location: str
    description: str
    tasks: tuple[str, ...]
    people: tuple[int, ...] = ()  # indexes into PEOPLE summoned by name
    roles: tuple[str, ...] = ()  # roles summoned without naming anyone


_ACTIVITIES = (
    _Activity(0, 8, 8, "Set up base camp", "camp",
              "Pitch the mess and lab tents, test radios and the satellite link.",
              ("Pitch lab tent", "Test radios", "Check generator fuel"), people=(0, 1, 2)),
    _Activity(1, 7, 9, "GNSS control network", "moraine",
              "Occupy the four control points for at least two hours each.",
              ("Mount base station", "Occupy control points", "Export RINEX"), people=(2,)),
    _Activity(2, 7, 8, "Moraine transect survey", "moraine",
              "Log boulder lithology every 20 m along transects A and B.",
              ("Walk transect A", "Walk transect B"), people=(1,)),
    _Activity(3, 6, 10, "Ablation stake installation", "glacier",
              "Drill twelve stakes into the ice along the centre line.",
              ("Steam-drill holes", "Set stakes", "Record stake heights"),
              roles=("glaciologist", "guide")),
    _Activity(4, 8, 7, "Lake sediment coring", "lake",
              "Take two gravity cores from the raft at the deepest point.",
              ("Inflate raft", "Take core 1", "Take core 2"), people=(1,)),
    _Activity(7, 7, 9, "Ice radar profiles", "glacier",
              "Drag the ground-penetrating radar along the three cross profiles.",
              ("Calibrate radar", "Profile 1", "Profile 2", "Profile 3"),
              people=(2,), roles=("glaciologist",)),
    _Activity(8, 7, 8, "Core sampling, upper moraine", "moraine",
              "Take three cores at each marked point and bag them by depth.",
              ("Calibrate drill", "Label jars", "Drill points 1-6"), people=(1,)),
    _Activity(9, 9, 6, "Rope rescue drill", "hut",
              "Crevasse rescue practice for the whole team before the high sites.",
              ("Set anchors", "Pulley system practice"), people=(0,), roles=("guide",)),
    _Activity(10, 6, 8, "Drone photogrammetry flight", "glacier",
              "Fly the tongue at 80 m above ground with 80 % overlap, before the wind.",
              ("Lay ground control targets", "Fly grid", "Check image coverage"),
              people=(2,)),
    _Activity(11, 8, 6, "Water sampling, Lac Bleu", "lake",
              "Sample the inflow, the outflow and the surface at the centre.",
              ("Rinse bottles", "Take samples", "Cool box to camp"), people=(1,)),
    _Activity(14, 6, 9, "Ablation stake readings", "glacier",
              "Read all twelve stakes and re-drill any that melted out.",
              ("Read stakes", "Re-drill melted-out stakes"), roles=("glaciologist",)),
    _Activity(15, 7, 9, "Repeat GNSS survey", "moraine",
              "Re-occupy the control points to measure moraine movement.",
              ("Mount base station", "Occupy control points"), people=(2,)),
    _Activity(16, 8, 7, "Hut-to-glacier route marking", "hut",
              "Flag the safe route from the hut down to the glacier for next season.",
              ("Place flags", "Record waypoints"), roles=("guide",)),
    _Activity(17, 9, 8, "Sample packing and labelling", "camp",
              "Pack every core and water sample for the lab, check against the log.",
              ("Check sample log", "Pack cores", "Pack water samples"),
              roles=("geologist",)),
    _Activity(18, 8, 8, "Strike base camp", "camp",
              "Take everything down, leave nothing behind.",
              ("Strike tents", "Load vehicles", "Final site walk"), people=(0,)),
)


def _at(day: int, hour: int) -> datetime:
    local = datetime.combine(FIRST_DAY + timedelta(days=day), time(hour), tzinfo=_LOCAL)
    return local.astimezone(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


def demo_entities(user_ids: Sequence[uuid.UUID]) -> list[SeedEntity]:
    """The project's content, referring entities before those that refer to them.

    ``user_ids`` are the server ids of :data:`PEOPLE`, in that order. Week one is
    confirmed, the rest still planned; nobody is summoned to two things at once.
    """
    if len(user_ids) != len(PEOPLE):
        raise ValueError(f"expected {len(PEOPLE)} user ids, got {len(user_ids)}")
    entities: list[SeedEntity] = []

    def add(entity_type: str, values: Mapping[str, object]) -> str:
        entity_id = _new_id()
        entities.append(SeedEntity(entity_type, entity_id, values))
        return entity_id

    last_day = max(a.day for a in _ACTIVITIES)
    add("project_settings", {"name": PROJECT_NAME, "timezone": TIMEZONE})
    plan = add(
        "plan",
        {
            "name": PROJECT_NAME,
            "description": (
                "Three weeks of field work around Arolla: glacier mass balance, moraine "
                "geology, lake sediments and a repeat GNSS survey."
            ),
            "starts_at": _at(0, 0),
            "ends_at": _at(last_day, 23),
        },
    )
    roles = {
        key: add("role", {"name": name, "skills": skills})
        for key, (name, skills) in _ROLES.items()
    }
    locations = {}
    for key, (name, address, latitude, longitude) in _LOCATIONS.items():
        values: dict[str, object] = {
            "name": name,
            "coordinates": {"latitude": latitude, "longitude": longitude},
        }
        if address is not None:
            values["address"] = address
        locations[key] = add("location", values)

    summonings: list[dict[str, object]] = []
    for activity in _ACTIVITIES:
        starts_at = _at(activity.day, activity.start)
        ends_at = _at(activity.day, activity.start + activity.hours)
        status = "confirmed" if activity.day < 7 else "planned"
        activity_id = add(
            "activity",
            {
                "plan_id": plan,
                "title": activity.title,
                "description": activity.description,
                "tasks": [
                    {"title": task, "done": activity.day < 3}
                    for task in activity.tasks
                ],
                "location_id": locations[activity.location],
                "starts_at": starts_at,
                "ends_at": ends_at,
                "status": status,
            },
        )
        times = {"activity_id": activity_id, "starts_at": starts_at, "ends_at": ends_at}
        summoning_status = "confirmed" if activity.day < 7 else "proposed"
        for index in activity.people:
            summonings.append(
                {
                    **times,
                    "user_id": str(user_ids[index]),
                    "role_id": roles[PEOPLE[index].role],
                    "status": summoning_status,
                }
            )
        for role in activity.roles:
            summonings.append({**times, "role_id": roles[role], "status": summoning_status})
    for summoning in summonings:
        add("summoning", summoning)
    for person, user_id in zip(PEOPLE, user_ids, strict=True):
        add(
            "membership",
            {
                "user_id": str(user_id),
                "role_ids": [roles[person.role]],
                "display_name": person.name,
            },
        )
    return entities


# --- writing it -------------------------------------------------------------------------


async def create_demo(storage: Storage) -> Demo:
    """Create the demo account, users, project and content; returns what was made."""
    tag = secrets.token_hex(3)  # keeps emails unique when the demo is created again
    admin = storage.admin
    account_id = await admin.create_account(ACCOUNT_NAME)
    project_id = await admin.create_project(account_id, PROJECT_NAME)
    users = []
    for person in PEOPLE:
        email = f"{person.email_local}+demo-{tag}@example.org"
        user_id = await admin.create_user(person.name, account_id, email)
        await admin.add_member(project_id, user_id, person.level)
        users.append(DemoUser(user_id, person.name, email, person.level))

    entities = demo_entities([u.user_id for u in users])
    batch = []
    for entity in entities:
        _, change = create_entity(entity.entity_type, entity.values)
        batch.append(EntityChanges(entity.entity_type, entity.entity_id, [change]))
    changelog = storage.change_log()
    results = await changelog.append(project_id, batch, sender=str(users[0].user_id))
    for entity, result in zip(entities, results, strict=True):
        if not isinstance(result, Accepted):
            raise StoreError(
                f"the demo's {entity.entity_type} {entity.entity_id} was refused: "
                f"{result.rejection.code}: {result.rejection.message}"
            )
    head = await changelog.head(project_id)
    # A running server learns of the new log head at once; if this fails it finds the head
    # by its periodic check, so the demo is not failed for it.
    with contextlib.suppress(StoreError):
        await storage.notifications.notify_head(project_id, head)
    return Demo(
        account_id=account_id,
        project_id=project_id,
        project_name=PROJECT_NAME,
        users=tuple(users),
        counts=dict(Counter(e.entity_type for e in entities)),
        head_seq=head,
    )
