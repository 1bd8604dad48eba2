"""The ``fieldsync`` command: serve, migrate, rebuild-read-models, and the admin commands.

The admin commands (``account``, ``user``, ``project``, ``member``, ``token``, ``demo``) are
for scripts as much as for people: they print the created id on stdout (one per line), or
one JSON document with ``--json``; on success stderr stays empty, and a refusal is one line
on stderr with exit status 1. The work itself is in ``store.projects`` and ``store.demo``.

``serve`` migrates, then runs uvicorn. On Ctrl-C or SIGTERM, shutdown runs in layers, each
waiting for the one above: uvicorn stops accepting and lets in-flight requests finish, the
app's lifespan closes the pool (which waits for borrowed connections, so open transactions
end), and only then does the embedded PostgreSQL (if any) stop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from observability.logs import LOG_FORMATS, configure_logging
from store import projects
from store.database import (
    close_pool,
    connect,
    create_pool,
    redact_url,
    resolve_database_url,
)
from store.errors import StoreError
from store.migrations import check_schema, migrate

logger = logging.getLogger("fieldsync")

# Long-lived connections (WebSockets) must not hold a shutdown forever.
GRACEFUL_SHUTDOWN_SECONDS = 30
DEFAULT_TOKEN_TTL = 12 * 3600


class CommandError(Exception):
    """The command cannot do what was asked; the message says why (exit status 1)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        configure_logging(args.log_format)
    else:
        _configure_logging(quiet=args.quiet)
    # SIGTERM behaves like Ctrl-C everywhere, so context managers (the embedded database)
    # always unwind; during `serve` uvicorn takes both over for its graceful shutdown.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with resolve_database_url(args.database_url, args.data_dir) as url:
            logger.info("database: %s", redact_url(url))
            code: int = asyncio.run(args.run(args, url))
            return code
    except (StoreError, CommandError) as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.info("interrupted")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldsync", description="Offline-first sync server for field project plans."
    )
    parser.set_defaults(quiet=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="migrate the database, then serve HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="a browser Origin that may open the WebSocket (repeatable; '*' for any); "
        "default $FIELDSYNC_ALLOWED_ORIGINS, comma-separated",
    )
    serve.add_argument(
        "--jwks-url",
        default=os.environ.get("FIELDSYNC_JWKS_URL"),
        help="verify tokens (RS256/ES256) against this JWKS instead of the HS256 secret "
        "(default $FIELDSYNC_JWKS_URL)",
    )
    serve.add_argument(
        "--token-issuer",
        default=os.environ.get("FIELDSYNC_TOKEN_ISSUER", "fieldsync"),
        help="the iss claim tokens must carry with --jwks-url (default fieldsync)",
    )
    serve.add_argument(
        "--token-audience",
        default=os.environ.get("FIELDSYNC_TOKEN_AUDIENCE", "fieldsync"),
        help="the aud claim tokens must carry with --jwks-url (default fieldsync)",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="run N server processes on ports PORT..PORT+N-1, sharing one database "
        "(put a load balancer in front: deploy/nginx.conf)",
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="json",
        help="json: one JSON object per line (default); text: for people",
    )
    serve.add_argument(
        "--slow-ms",
        type=float,
        default=500.0,
        help="log pushes and snapshots that take longer than this (default 500)",
    )
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

    admin: list[argparse.ArgumentParser] = []

    account = _group(commands, "account", "manage accounts")
    account_create = _action(account, "create", "create an account; prints its id", admin)
    account_create.add_argument("--name", required=True, help="the account's name")
    account_create.set_defaults(run=_account_create)

    user = _group(commands, "user", "manage users")
    user_create = _action(user, "create", "create a user; prints its id", admin)
    user_create.add_argument("--name", required=True, help="the name shown to others")
    user_create.add_argument("--email", default=None, help="unique among users (optional)")
    user_create.add_argument(
        "--account", type=uuid.UUID, default=None, help="the account the user belongs to"
    )
    user_create.set_defaults(run=_user_create)

    project = _group(commands, "project", "manage projects")
    project_create = _action(project, "create", "create a project; prints its id", admin)
    project_create.add_argument(
        "--account", type=uuid.UUID, required=True, help="the account that owns it"
    )
    project_create.add_argument("--name", required=True, help="the project's name")
    project_create.set_defaults(run=_project_create)

    member = _group(commands, "member", "manage who may enter a project")
    member_add = _action(
        member, "add", "make a user a member of a project, or change their level", admin
    )
    member_remove = _action(member, "remove", "take a user out of a project", admin)
    for command in (member_add, member_remove):
        command.add_argument("--project", type=uuid.UUID, required=True, help="the project's id")
        command.add_argument("--user", type=uuid.UUID, required=True, help="the user's id")
    member_add.add_argument(
        "--level", required=True, metavar="LEVEL", help=" | ".join(projects.LEVELS)
    )
    member_add.set_defaults(run=_member_add)
    member_remove.set_defaults(run=_member_remove)

    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("--user", type=uuid.UUID, required=True, help="the user's id")
    _ttl_option(token)
    token.set_defaults(run=_token)
    admin.append(token)

    demo = commands.add_parser(
        "demo", help="create a demo account and project with three users; prints their tokens"
    )
    _ttl_option(demo)
    demo.set_defaults(run=_demo)
    admin.append(demo)

    for command in admin:
        command.add_argument(
            "--json", action="store_true", help="print one JSON document instead of plain lines"
        )
        command.set_defaults(quiet=True)

    for command in (serve, migrate_cmd, rebuild, *admin):
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _group(commands: Any, name: str, help_text: str) -> Any:
    """A command with its own actions (``fieldsync NAME ACTION``)."""
    group = commands.add_parser(name, help=help_text)
    return group.add_subparsers(dest="action", required=True, metavar="ACTION")


def _action(
    actions: Any, name: str, help_text: str, admin: list[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
    admin.append(parser)
    return parser


def _ttl_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TOKEN_TTL,
        help="seconds until a token expires (default 12 h)",
    )


class _ShortFormatter(logging.Formatter):
    """``fieldsync: error: message``: one plain line, for the admin commands."""

    def format(self, record: logging.LogRecord) -> str:
        return f"fieldsync: {record.levelname.lower()}: {record.getMessage()}"


def _configure_logging(quiet: bool = False) -> None:
    """Servers narrate at INFO; admin commands (``quiet``) only say what went wrong."""
    if quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ShortFormatter())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
    else:
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


def _token_and_origin_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The serve options each worker must get too (the rest reach it through the plan)."""
    options: list[str] = []
    for origin in args.allowed_origin or ():
        options += ["--allowed-origin", origin]
    if args.jwks_url:
        options += ["--jwks-url", args.jwks_url, "--token-issuer", args.token_issuer]
        options += ["--token-audience", args.token_audience]
    return tuple(options)


async def _serve(args: argparse.Namespace, url: str) -> int:
    await _migrate_now(url)
    if args.workers > 1:
        from workers import WorkerPlan, run_workers

        _load_secret(args.data_dir)  # created once here, not raced by the workers
        plan = WorkerPlan(
            args.host,
            args.port,
            args.workers,
            args.data_dir,
            args.log_format,
            args.slow_ms,
            _token_and_origin_options(args),
        )
        return await run_workers(plan, url)

    from auth.secret import load_secret
    from auth.tokens import JwksVerifier, SecretVerifier, TokenVerifier
    from live.origins import origins_from_env
    from observability.metrics import Metrics
    from server import create_app, uvicorn_config

    verifier: TokenVerifier
    if args.jwks_url:
        verifier = JwksVerifier(
            args.jwks_url, audience=args.token_audience, issuer=args.token_issuer
        )
        logger.info("tokens are checked against the JWKS at %s", args.jwks_url)
    else:
        verifier = SecretVerifier(load_secret(args.data_dir))
    origins = args.allowed_origin if args.allowed_origin is not None else origins_from_env()
    admin_key = os.environ.get("FIELDSYNC_ADMIN_KEY") or None
    try:
        app = create_app(
            url,
            verifier=verifier,
            allowed_origins=origins,
            admin_key=admin_key,
            metrics=Metrics(slow_ms=args.slow_ms),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if admin_key is not None:
        logger.info("the HTTP admin API is enabled under /admin")
    config = uvicorn_config(app, args.host, args.port)
    config.lifespan = "on"
    config.log_config = None  # uvicorn's records go through our handler and format
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


# --- admin commands -------------------------------------------------------------------


@asynccontextmanager
async def _admin_connection(url: str) -> AsyncIterator[Any]:
    """A connection to a database whose schema matches this code."""
    conn = await connect(url)
    try:
        await check_schema(conn)
        yield conn
    finally:
        await conn.close()


def _emit(args: argparse.Namespace, lines: Sequence[str], document: Mapping[str, Any]) -> None:
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for line in lines:
            print(line)


def _load_secret(data_dir: Path) -> bytes:
    from auth.secret import load_secret

    try:
        return load_secret(data_dir)
    except (ValueError, OSError) as exc:
        raise CommandError(f"cannot load the token secret: {exc}") from exc


def _check_ttl(ttl: int) -> None:
    if ttl <= 0:
        raise CommandError(f"--ttl must be a positive number of seconds, got {ttl}")


def _issue(secret: bytes, user_id: uuid.UUID, ttl: int) -> tuple[str, str]:
    """A token for the user and its expiry as an ISO 8601 UTC timestamp."""
    from auth.tokens import issue

    issued = issue(secret, user_id, ttl)
    return issued.token, issued.expires_at


async def _account_create(args: argparse.Namespace, url: str) -> int:
    async with _admin_connection(url) as conn:
        account_id = await projects.create_account(conn, args.name)
    _emit(args, [str(account_id)], {"account_id": str(account_id)})
    return 0


async def _user_create(args: argparse.Namespace, url: str) -> int:
    async with _admin_connection(url) as conn:
        user_id = await projects.create_user(conn, args.name, args.account, args.email)
    _emit(args, [str(user_id)], {"user_id": str(user_id)})
    return 0


async def _project_create(args: argparse.Namespace, url: str) -> int:
    async with _admin_connection(url) as conn:
        project_id = await projects.create_project(conn, args.account, args.name)
    _emit(args, [str(project_id)], {"project_id": str(project_id)})
    return 0


async def _member_add(args: argparse.Namespace, url: str) -> int:
    projects.check_level(args.level)  # before touching the database
    async with _admin_connection(url) as conn:
        previous = await projects.add_member(conn, args.project, args.user, args.level)
    document = {
        "project_id": str(args.project),
        "user_id": str(args.user),
        "level": args.level,
        "previous_level": previous,
    }
    _emit(args, [], document)
    return 0


async def _member_remove(args: argparse.Namespace, url: str) -> int:
    async with _admin_connection(url) as conn:
        level = await projects.remove_member(conn, args.project, args.user)
    document = {"project_id": str(args.project), "user_id": str(args.user), "removed_level": level}
    _emit(args, [], document)
    return 0


async def _token(args: argparse.Namespace, url: str) -> int:
    _check_ttl(args.ttl)
    secret = _load_secret(args.data_dir)
    async with _admin_connection(url) as conn:
        await projects.require_user(conn, args.user)
    token, expires = _issue(secret, args.user, args.ttl)
    _emit(args, [token], {"user_id": str(args.user), "token": token, "expires_at": expires})
    return 0


async def _demo(args: argparse.Namespace, url: str) -> int:
    from store.demo import create_demo

    _check_ttl(args.ttl)
    secret = _load_secret(args.data_dir)  # a bad secret fails before anything is written
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await check_schema(conn)
        demo = await create_demo(pool)
    finally:
        await close_pool(pool)
    users = []
    for user in demo.users:
        token, expires = _issue(secret, user.user_id, args.ttl)
        users.append(
            {
                "name": user.name,
                "email": user.email,
                "level": user.level,
                "user_id": str(user.user_id),
                "token": token,
                "expires_at": expires,
            }
        )
    document = {
        "project_id": str(demo.project_id),
        "project_name": demo.project_name,
        "account_id": str(demo.account_id),
        "entities": dict(demo.counts),
        "head_seq": demo.head_seq,
        "users": users,
    }
    _emit(args, _demo_lines(document, args.ttl), document)
    return 0


def _count(n: int, entity_type: str) -> str:
    if entity_type == "project_settings":
        return f"{n} project settings"
    if n == 1:
        return f"1 {entity_type}"
    return f"{n} {entity_type[:-1]}ies" if entity_type.endswith("y") else f"{n} {entity_type}s"


def _demo_lines(demo: Mapping[str, Any], ttl: int) -> list[str]:
    counts = ", ".join(_count(n, entity_type) for entity_type, n in demo["entities"].items())
    users: list[Mapping[str, str]] = demo["users"]
    width = max(len(u["name"]) for u in users)
    hours = f"{ttl / 3600:g} h"
    lines = [
        f"Demo project \"{demo['project_name']}\"",
        f"  project id  {demo['project_id']}",
        f"  account id  {demo['account_id']}",
        f"  content     {counts} (log head seq {demo['head_seq']})",
        "",
        f"Members and their tokens (valid {hours}; a server accepts them when it uses the same",
        "--data-dir or FIELDSYNC_SECRET as this command):",
    ]
    for u in users:
        lines += [
            f"  {u['name']:<{width}}  {u['level']:<10}  user {u['user_id']}",
            f"    token {u['token']}",
        ]
    lead = next(u for u in users if u["level"] == "lead")
    other = next(u for u in users if u is not lead)
    lines += [
        "",
        "Edit offline with two clients and watch them merge (server on 127.0.0.1:8000):",
        "  python client-sdk/examples/offline_edit.py --url ws://127.0.0.1:8000/sync \\",
        f"    --project {demo['project_id']} \\",
        f"    --token {lead['token']} \\",
        f"    --token2 {other['token']}",
    ]
    return lines


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


if __name__ == "__main__":  # how `serve --workers` starts each worker
    sys.exit(main())
