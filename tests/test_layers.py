"""Layer rules, checked on the source: which module may import what.

The import graph is read from the source files (every ``import``, at any depth, lazy ones
and ``TYPE_CHECKING`` ones included), so a rule holds whether or not a module is imported
in this test run. To add a rule, add a test that states it over :func:`package_modules`
and :func:`imports` (or :func:`reachable`); to add a storage-neutral module to ``store/``,
name it in :data:`STORAGE_NEUTRAL`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fieldsync"

DRIVERS = frozenset({"asyncpg", "pgserver"})
"""The database drivers: only the PostgreSQL storage (in ``store/``) imports them."""

STORAGE_NEUTRAL = frozenset(
    f"fieldsync.store.{name}"
    for name in (
        "__init__",
        "accounts",
        "append_plan",
        "apply_ahead",
        "attachment_records",
        "compaction",
        "conflict_plan",
        "demo",
        "document_cache",
        "errors",
        "group_commit",
        "heads",
        "memory",
        "memory_admin",
        "memory_queries",
        "memory_state",
        "ports",
        "records",
        "replay",
        "replica_plan",
    )
)
"""Modules of ``store/`` that belong to no implementation (the ports, their records and
errors, the pure planning every implementation shares) or to the in-memory one: none of
them reaches a driver, even through another module."""

PURE_CORE = ("fieldsync.sync", "fieldsync.model", "fieldsync.conflict", "fieldsync.query")
"""Bytes and records in, decisions out: no I/O, no clock, nothing from the shells."""

IO_MODULES = frozenset(
    {
        "asyncio",
        "socket",
        "selectors",
        "select",
        "ssl",
        "threading",
        "subprocess",
        "multiprocessing",
        "signal",
        "time",
        "httpx",
        "starlette",
        "uvicorn",
        "websockets",
        *DRIVERS,
    }
)
"""What the pure core never imports: event loops, sockets, threads, processes, clocks,
network libraries, database drivers."""

SHELLS = (
    "fieldsync.store",
    "fieldsync.live",
    "fieldsync.server",
    "fieldsync.cli",
    "fieldsync.workers",
    "fieldsync.observability",
    "fieldsync.auth",
)
"""The layers above the pure core, which it must not depend on."""

CLOCK_CALLS = frozenset({"now", "utcnow", "today", "monotonic", "perf_counter", "time_ns"})
"""Calls that read a clock (``datetime.now()``, ``date.today()``, ...)."""


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(("fieldsync", *relative.parts))


@cache
def package_modules() -> dict[str, Path]:
    """Every module of the package, by name, as the import root links them."""
    found: dict[str, Path] = {}
    for entry in sorted(PACKAGE.iterdir()):
        if entry.suffix == ".py":
            found[_module_name(entry)] = entry.resolve()
        elif entry.is_dir() and (entry / "__init__.py").exists():
            for path in sorted(entry.rglob("*.py")):
                found[_module_name(path)] = path.resolve()
    return found


def _tree(module: str) -> ast.Module:
    return ast.parse(package_modules()[module].read_text(encoding="utf-8"))


def _package_of(module: str) -> str:
    path = package_modules()[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


@cache
def imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports, by absolute name (``from a import b`` gives ``a``,
    and ``a.b`` when that is a module)."""
    known = package_modules()
    found: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = _package_of(module).split(".")
                anchor = parent[: len(parent) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    found.add(f"{base}.{alias.name}")
    return frozenset(found)


def _top(name: str) -> str:
    return name.split(".")[0]


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def reachable(module: str) -> set[str]:
    """``module`` and every module of the package it imports, directly or through others
    (importing ``a.b.c`` runs ``a`` and ``a.b`` too)."""
    known = package_modules()
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in imports(current):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                init = f"{candidate}.__init__"
                if candidate in known:
                    todo.append(candidate)
                elif init in known:
                    todo.append(init)
    return seen


def _direct_driver_importers() -> dict[str, set[str]]:
    return {
        module: {name for name in imports(module) if _top(name) in DRIVERS}
        for module in package_modules()
        if any(_top(name) in DRIVERS for name in imports(module))
    }


def test_the_walk_sees_the_package() -> None:
    modules = package_modules()
    assert "fieldsync.store.changelog" in modules
    assert "fieldsync.server" in modules
    assert "fieldsync.sync.codec" in modules
    assert "asyncpg" in imports("fieldsync.store.changelog")
    assert "fieldsync.store.heads" in imports("fieldsync.store.notifications")
    # transitive: the server reaches the change log only through the PostgreSQL storage
    assert "fieldsync.store.changelog" not in imports("fieldsync.server")
    assert "fieldsync.store.changelog" in reachable("fieldsync.server")


def test_only_the_postgresql_storage_imports_a_database_driver() -> None:
    importers = _direct_driver_importers()
    assert "fieldsync.store.changelog" in importers  # the walk finds them
    outside = {
        module: sorted(drivers)
        for module, drivers in importers.items()
        if not _within(module, ["fieldsync.store"]) or module in STORAGE_NEUTRAL
    }
    assert outside == {}


def test_storage_neutral_modules_never_reach_a_driver() -> None:
    importers = set(_direct_driver_importers())
    for module in sorted(STORAGE_NEUTRAL):
        assert module in package_modules(), f"{module} is listed but does not exist"
        through = sorted(reachable(module) & importers)
        assert through == [], f"{module} reaches a driver through {through}"


def _pure_modules() -> Iterator[str]:
    return (m for m in package_modules() if _within(m, PURE_CORE))


@pytest.mark.parametrize("module", sorted(_pure_modules()))
def test_the_pure_core_does_no_io_and_imports_no_shell(module: str) -> None:
    forbidden = sorted(
        name for name in imports(module) if _top(name) in IO_MODULES or _within(name, SHELLS)
    )
    assert forbidden == [], f"{module} imports {forbidden}"


def clock_calls(tree: ast.AST) -> list[str]:
    """The clock reads in ``tree``, as written."""
    return sorted(
        ast.unparse(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_CALLS
    )


@pytest.mark.parametrize("module", sorted(_pure_modules()))
def test_the_pure_core_reads_no_clock(module: str) -> None:
    calls = clock_calls(_tree(module))
    assert calls == [], f"{module} reads a clock: {calls}"


def test_the_clock_check_finds_clock_reads() -> None:
    source = "import datetime as d\nx = d.datetime.now(d.UTC)\ny = d.date.today()\nz = d.UTC\n"
    assert clock_calls(ast.parse(source)) == ["d.date.today", "d.datetime.now"]
    assert _within("fieldsync.store.memory", SHELLS)
    assert not _within("fieldsync.storehouse", SHELLS)


AUTOMERGE_FORMAT = "fieldsync.model.automerge_format"
"""The workarounds for what the binding lacks: deletable as a unit, so they depend on
nothing of ours outside their own package."""


@pytest.mark.parametrize(
    "module", sorted(m for m in package_modules() if _within(m, [AUTOMERGE_FORMAT]))
)
def test_the_automerge_format_family_stands_alone(module: str) -> None:
    outside = sorted(
        name
        for name in imports(module)
        if _top(name) == "fieldsync" and not _within(name, [AUTOMERGE_FORMAT])
    )
    assert outside == [], f"{module} imports {outside}"
