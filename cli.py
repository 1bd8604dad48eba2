"""The ``fieldsync`` command: serve, migrate, rebuild-read-models, token.

``serve`` migrates, then runs uvicorn. On Ctrl-C or SIGTERM, shutdown runs in layers, each
waiting for the one above: uvicorn stops accepting and lets in-flight requests finish, the
app's lifespan closes the pool (which waits for borrowed connections, so open transactions
end), and only then does the embedded PostgreSQL (if any) stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from store.database import close_pool, connect, create_pool, redact_url, resolve_database_url
from store.errors import StoreError
from store.migrations import check_schema, migrate

logger = logging.getLogger("fieldsync")

# Long-lived connections (WebSockets) must not hold a shutdown forever.
GRACEFUL_SHUTDOWN_SECONDS = 30


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging()
    # SIGTERM behaves like Ctrl-C everywhere, so context managers (the embedded database)
    # always unwind; during `serve` uvicorn takes both over for its graceful shutdown.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with resolve_database_url(args.database_url, args.data_dir) as url:
            logger.info("database: %s", redact_url(url))
            code: int = asyncio.run(args.run(args, url))
            return code
    except StoreError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.info("interrupted")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldsync", description="Offline-first sync server for field project plans."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="migrate the database, then serve HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.set_defaults(run=_serve)

    migrate_cmd = commands.add_parser("migrate", help="apply pending schema migrations")
    migrate_cmd.set_defaults(run=_migrate)

    rebuild = commands.add_parser(
        "rebuild-read-models", help="recompute read models from the change log"
    )
    rebuild.add_argument(
        "--project", type=uuid.UUID, default=None, help="only this project (default: all)"
    )
    rebuild.set_defaults(run=_rebuild)

    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("--user", type=uuid.UUID, required=True, help="the user's id")
    token.add_argument(
        "--ttl", type=int, default=12 * 3600, help="seconds until it expires (default 12 h)"
    )
    token.set_defaults(run=_token)

    for command in (serve, migrate_cmd, rebuild, token):
        command.add_argument(
            "--data-dir",
            type=Path,
            default=Path(".fieldsync"),
            help="where the embedded PostgreSQL keeps its data (default: ./.fieldsync)",
        )
        command.add_argument(
            "--database-url",
            default=None,
            help="PostgreSQL URL; overrides $DATABASE_URL; without either, use the embedded one",
        )
    return parser


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pgserver narrates every step of starting PostgreSQL at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)


async def _migrate_now(url: str) -> None:
    conn = await connect(url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        logger.info("applied migrations %s", ", ".join(f"{v:04d}" for v in applied))
    else:
        logger.info("database schema is up to date")


async def _migrate(args: argparse.Namespace, url: str) -> int:
    await _migrate_now(url)
    return 0


async def _serve(args: argparse.Namespace, url: str) -> int:
    await _migrate_now(url)

    from auth.secret import load_secret
    from server import create_app, uvicorn_config

    app = create_app(url, secret=load_secret(args.data_dir))
    config = uvicorn_config(app, args.host, args.port)
    config.lifespan = "on"
    config.log_config = None  # keep our plain format
    config.timeout_graceful_shutdown = GRACEFUL_SHUTDOWN_SECONDS
    server = uvicorn.Server(config)
    signals: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)

    # uvicorn handles SIGINT/SIGTERM while it serves, then restores the previous handlers
    # and re-raises what it caught; these handlers take that re-raise quietly, so the
    # layers below (pool already closed, embedded database) shut down in order.
    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits this way when it cannot bind; clean up below instead
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        logger.error("server did not start")
        return 1
    logger.info("stopped")
    return 0


async def _token(args: argparse.Namespace, url: str) -> int:
    from auth.secret import load_secret
    from auth.tokens import issue_token

    conn = await connect(url)
    try:
        await check_schema(conn)
        known = await conn.fetchval("SELECT 1 FROM users WHERE user_id = $1", args.user)
    finally:
        await conn.close()
    if not known:
        logger.error("no user %s", args.user)
        return 1
    print(issue_token(load_secret(args.data_dir), args.user, ttl_seconds=args.ttl))
    return 0


async def _rebuild(args: argparse.Namespace, url: str) -> int:
    from store.rebuild import rebuild_read_models

    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await check_schema(conn)
        report = await rebuild_read_models(pool, args.project)
    finally:
        await close_pool(pool)
    print(report)
    return 0
