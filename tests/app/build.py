"""Building the web app (``app/``) from the Python tests: ``npm run build`` once per session,
so the tests always run the sources as they are. Its npm dependencies (and the SDK's) must be
installed, as the README's test command does; without them the tests fail and say so."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
SCREENSHOTS = Path(
    os.environ.get("FIELDSYNC_SCREENSHOTS", str(Path(tempfile.gettempdir()) / "fieldsync-screens"))
)
"""Where the browser test saves its screenshots: a temporary folder, or with
``FIELDSYNC_SCREENSHOTS=docs/screenshots`` the ones the README shows (so an ordinary test run
leaves the checked-in images alone)."""
_built = False


def npm() -> str:
    found = shutil.which("npm")
    assert found is not None, "npm (Node 20) is needed to build the web app"
    return found


def build_app() -> None:
    global _built
    if _built:
        return
    for folder in (ROOT / "client-sdk" / "typescript", APP):
        where = folder.relative_to(ROOT)
        assert (folder / "node_modules").is_dir(), f"run `npm ci --prefix {where}`"
    done = subprocess.run(
        [npm(), "run", "build", "--prefix", str(APP)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    _built = True
