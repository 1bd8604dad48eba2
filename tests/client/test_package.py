"""The SDK wheel is self-contained: the shared wire format and schemas inside, no server code.

The wheel is built from ``client-sdk/`` as a user would, unpacked, and every module of it is
imported in a fresh interpreter that refuses to import the server's packages and its
dependencies, with the repository kept off ``sys.path``.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = (
    "asyncpg", "starlette", "uvicorn", "prometheus_client", "jwt",
    "store", "live", "auth", "conflict", "observability", "server", "cli", "workers",
)  # fmt: skip

IMPORT_EVERYTHING = """
import importlib, importlib.abc, pkgutil, sys
forbidden = set(sys.argv[2].split(","))

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in forbidden:
            raise ImportError(f"the SDK imported {name}")
        return None

sys.meta_path.insert(0, Refuse())
sys.path = [p for p in sys.path if p not in ("", sys.argv[3])]
sys.path.insert(0, sys.argv[1])
import fieldsync_client, sync, model
for package in (fieldsync_client, sync, model):
    assert package.__file__.startswith(sys.argv[1]), package.__file__
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
ours = ("fieldsync_client", "sync", "model")
print("imported", len([m for m in sys.modules if m.split(".")[0] in ours]))
"""


def test_the_wheel_holds_the_sdk_and_the_shared_packages_and_no_server_code(
    tmp_path: Path,
) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
         str(ROOT / "client-sdk")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("fieldsync_client-*.whl")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
        tops = {name.split("/")[0] for name in archive.namelist()}
    packages = {t for t in tops if not t.endswith(".dist-info")}
    assert packages == {"fieldsync_client", "sync", "model"}

    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, str(unpacked), ",".join(FORBIDDEN), str(ROOT)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported ")
