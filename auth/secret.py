"""The token-signing secret: FIELDSYNC_SECRET, or a random one kept in the data directory."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

SECRET_FILE = "token-secret"


def load_secret(data_dir: Path, environ: Mapping[str, str] = os.environ) -> bytes:
    """The configured secret, creating a private random one on first use."""
    configured = environ.get("FIELDSYNC_SECRET")
    if configured:
        if len(configured) < 32:
            raise ValueError("FIELDSYNC_SECRET must be at least 32 characters")
        return configured.encode()
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
