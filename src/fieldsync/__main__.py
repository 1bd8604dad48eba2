"""``fieldsync`` (and ``python -m fieldsync``): the server's command, or a clear word on what
to install when only the pure parts are (``pip install fieldsync`` without ``[server]``)."""

from __future__ import annotations

import importlib.util
import sys

SERVER_DEPENDENCIES = ("asyncpg", "pgserver", "starlette", "uvicorn", "prometheus_client", "jwt")


def main() -> int:
    missing = [name for name in SERVER_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            "fieldsync: the server's dependencies are not installed "
            f"({', '.join(missing)}): pip install 'fieldsync[server]'",
            file=sys.stderr,
        )
        return 2
    from fieldsync.cli import main as command

    return command()


if __name__ == "__main__":
    sys.exit(main())
