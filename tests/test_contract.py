"""The checked-in contract (``contract/``) is exactly what ``fieldsync contract`` makes now."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from fieldsync.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHECKED_IN = ROOT / "contract"


def _generated_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }


def test_checked_in_contract_is_up_to_date(tmp_path: Path) -> None:
    assert main(["contract", "--out", str(tmp_path)]) == 0
    fresh = _generated_files(tmp_path)
    stored = _generated_files(CHECKED_IN)
    stale = sorted(name for name in fresh if stored.get(name) != fresh[name])
    extra = sorted(set(stored) - set(fresh))
    hint = "contract/ is stale: run `fieldsync contract` and commit the result"
    assert not stale, f"{hint} (changed: {stale})"
    assert not extra, f"{hint} (no longer generated: {extra})"


def test_regenerating_removes_files_it_no_longer_makes_and_keeps_the_readme(
    tmp_path: Path,
) -> None:
    (tmp_path / "vectors" / "server_to_client").mkdir(parents=True)
    old = tmp_path / "vectors" / "server_to_client" / "gone.json"
    old.write_text("{}")
    readme = tmp_path / "README.md"
    readme.write_text("kept")
    assert main(["contract", "--out", str(tmp_path)]) == 0
    assert not old.exists()
    assert readme.read_text() == "kept"
    assert filecmp.cmp(tmp_path / "protocol.json", CHECKED_IN / "protocol.json", shallow=False)


@pytest.mark.parametrize(
    "name", ["entities.schema.json", "protocol.json", "permissions.json", "vectors/index.json"]
)
def test_contract_files_exist(name: str) -> None:
    assert (CHECKED_IN / name).is_file()
