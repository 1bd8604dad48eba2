"""Both distributions build from their sdists, hold only their own packages, and the SDK
needs none of the server's code or dependencies.

``fieldsync`` holds the package ``fieldsync`` (everything, linked from the repository's
top-level folders by ``src/fieldsync``); its base install brings only the pure parts'
dependencies, the server's come with the ``server`` extra. ``fieldsync-client`` holds only
``fieldsync_client`` and depends on ``fieldsync``. Each sdist is built as a release would
be, each wheel from its sdist, then every module the SDK can reach is imported from the
unpacked wheels in an interpreter that refuses the server's dependencies and the checkout.
"""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_DEPENDENCIES = ("asyncpg", "starlette", "uvicorn", "prometheus_client", "jwt", "pgserver")

IMPORT_EVERYTHING = """
import importlib, importlib.abc, pkgutil, sys
refused, unpacked, checkout = sys.argv[1].split(","), sys.argv[2], sys.argv[3]

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in refused:
            raise ImportError(f"the SDK imported {name}")
        return None

sys.meta_path.insert(0, Refuse())
sys.path = [unpacked] + [p for p in sys.path if p not in ("", checkout)]
import fieldsync, fieldsync.sync, fieldsync.model, fieldsync.conflict, fieldsync_client
count = 0
for package in (fieldsync_client, fieldsync.sync, fieldsync.model, fieldsync.conflict):
    assert package.__file__.startswith(unpacked), package.__file__
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        assert module.__file__.startswith(unpacked), module.__file__
        count += 1
print("imported", count)
"""


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each distribution's sdist, then its wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    built: dict[str, Path] = {}
    for name, project in (("fieldsync", ROOT), ("fieldsync_client", ROOT / "client-sdk/python")):
        _run(sys.executable, "-m", "build", "--sdist", "--outdir", str(out / name), str(project))
        [sdist] = (out / name).glob("*.tar.gz")
        _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(sdist))
        [wheel] = out.glob(f"{name}-*.whl")
        built[name] = wheel
        built[f"{name} sdist"] = sdist
    return built


def _tops(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {n.split("/")[0] for n in archive.namelist() if not n.split("/")[0].endswith(
            ".dist-info")}  # fmt: skip


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_the_server_wheel_holds_one_package_and_server_dependencies_only_as_an_extra(
    wheels: dict[str, Path],
) -> None:
    wheel = wheels["fieldsync"]
    assert _tops(wheel) == {"fieldsync"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for expected in (
        "fieldsync/__init__.py", "fieldsync/py.typed", "fieldsync/cli.py", "fieldsync/server.py",
        "fieldsync/sync/codec.py", "fieldsync/model/merge.py", "fieldsync/store/changelog.py",
        "fieldsync/migrations/0001_initial.sql",
    ):  # fmt: skip
        assert expected in names, expected
    assert not any(n.startswith(("fieldsync/tests", "fieldsync/bench")) for n in names)
    requires = _metadata(wheel).get_all("Requires-Dist") or []
    base = [r for r in requires if "extra ==" not in r]
    assert sorted(re.split(r"[<>=!~ ;\[]", r)[0] for r in base) == ["automerge", "msgspec"]
    for dependency in ("asyncpg", "starlette", "uvicorn", "pgserver"):
        [line] = [r for r in requires if r.startswith(dependency)]
        assert 'extra == "server"' in line
    with tarfile.open(wheels["fieldsync sdist"]) as sdist:
        assert any(n.endswith("src/fieldsync/sync/codec.py") for n in sdist.getnames())


def test_the_sdk_wheel_holds_only_the_sdk_and_depends_on_the_shared_code(
    wheels: dict[str, Path],
) -> None:
    wheel = wheels["fieldsync_client"]
    assert _tops(wheel) == {"fieldsync_client"}
    requires = _metadata(wheel).get_all("Requires-Dist") or []
    assert "fieldsync==0.1.0" in requires
    assert not any(r.startswith(SERVER_DEPENDENCIES) for r in requires)


def test_every_sdk_module_imports_from_the_wheels_without_server_dependencies(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    unpacked = tmp_path / "site"
    for name in ("fieldsync", "fieldsync_client"):
        with zipfile.ZipFile(wheels[name]) as archive:
            archive.extractall(unpacked)
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, ",".join(SERVER_DEPENDENCIES),
         str(unpacked), str(ROOT)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 30


def test_the_command_without_the_server_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from fieldsync.__main__ import main

    installed = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "asyncpg" else installed(name)
    )
    assert main() == 2
    assert "pip install 'fieldsync[server]'" in capsys.readouterr().err
