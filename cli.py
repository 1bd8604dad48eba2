"""The ``fieldsync`` command: serve, migrate, rebuild-read-models, and the admin commands.

The admin commands (``account``, ``user``, ``project``, ``member``, ``token``, ``demo``) are
for scripts as much as for people: they print the created id on stdout (one per line), a
table for ``list``, or one JSON document with ``--json``; on success stderr stays empty, and
a refusal is one line on stderr with exit status 1. The work itself is done by the
storage's ports (``store.ports``: the admin and maintenance ports, on PostgreSQL through
``store.postgres``) and ``store.demo``.

Every command checks its arguments (and ``serve`` its ports) before it touches a database,
and only ``serve`` and ``migrate`` may create an embedded one: any other command pointed at
a data directory without a cluster says so instead of leaving a new, empty one behind.

``serve`` checks that it can listen, migrates, then runs uvicorn. On Ctrl-C or SIGTERM,
shutdown runs in layers, each waiting for the one above: uvicorn stops accepting and lets
in-flight requests finish, the app's lifespan closes the storage (whose pool waits for
borrowed connections, so open transactions end), and only then does the embedded PostgreSQL (if
any) stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import errno
import json
import logging
import os
import shlex
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib.util import find_spec
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import uvicorn

from fieldsync.live.event_loops import (
    DEFAULT_LOOP,
    LOOP_CHOICES,
    LoopFactory,
    LoopUnavailableError,
    loop_factory,
)
from fieldsync.live.memory import settle_collector
from fieldsync.observability.logs import LOG_FORMATS, configure_logging
from fieldsync.observability.native_output import capture_native_output
from fieldsync.store.accounts import LEVELS, row_json
from fieldsync.store.database import redact_url, resolve_database_url
from fieldsync.store.embedded import data_dir_problem
from fieldsync.store.errors import StoreError
from fieldsync.store.ports import Storage
from fieldsync.store.postgres import PostgresStorage
from fieldsync.store.replica import DEFAULT_MAX_LAG as DEFAULT_REPLICA_MAX_LAG

logger = logging.getLogger("fieldsync")

# Long-lived connections (WebSockets) must not hold a shutdown forever.
GRACEFUL_SHUTDOWN_SECONDS = 30
DEFAULT_TOKEN_TTL = 12 * 3600
DEFAULT_PORT = 8000
# Where a listening `serve` writes its address, so `demo` run with the same --data-dir
# prints a command for the right server.
SERVE_RECORD = "serve.json"
EXAMPLE = Path(__file__).resolve().parent / "client-sdk" / "python" / "examples" / "offline_edit.py"


class CommandError(Exception):
    """The command cannot do what was asked; the message says why (exit status 1)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        args.log_format = resolve_log_format(args.log_format, sys.stderr)
        configure_logging(args.log_format)
        if args.workers <= 1:  # a process that serves (not a supervisor of workers)
            capture_native_output()  # a Rust panic's raw text becomes a log line too
    else:
        _configure_logging(quiet=args.quiet)
    # SIGTERM behaves like Ctrl-C everywhere, so context managers (the embedded database)
    # always unwind; during `serve` uvicorn takes both over for its graceful shutdown.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.command == "contract":  # files only: no database
        return write_contract(args.out)
    try:
        args.check(args)  # before any database is started, created or changed
        new_loop = _loop_factory(args)
        with resolve_database_url(
            args.database_url, args.data_dir, create=args.creates_database
        ) as url:
            logger.info("database: %s", redact_url(url))
            with asyncio.Runner(loop_factory=new_loop) as runner:
                code: int = runner.run(args.run(args, url))
            return code
    except (StoreError, CommandError) as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.info("interrupted")
        return 130


def _loop_factory(args: argparse.Namespace) -> LoopFactory | None:
    """The event loop a serving process runs on (``live.event_loops``); other commands
    keep asyncio's own. A supervisor of workers passes the choice on and serves nothing."""
    if args.command != "serve" or args.workers > 1:
        return None
    try:
        name, factory = loop_factory(args.loop)
    except LoopUnavailableError as exc:
        raise CommandError(str(exc)) from exc
    logger.info("event loop: %s", name)
    return factory


class _Parser(argparse.ArgumentParser):
    """An argument parser whose (sub)commands refuse unknown options themselves.

    argparse hands a subcommand's unknown arguments up to the top-level parser, which then
    shows its own usage; here the subcommand that got them shows its usage, and any error
    of a command names the option closest to one it does not know ("did you mean --port?"),
    also when the typo left a required option missing.
    """

    _given: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        if self._subparsers is None:  # a command's own options, not a list of commands
            options = [o for a in self._actions for o in a.option_strings if o[:2] == "--"]
            hint = option_suggestion(self._given, options)
            if hint is not None:
                unknown, close = hint
                if message.startswith("unrecognized arguments"):
                    message += f" (did you mean {close}?)"
                else:
                    message += f"; {unknown} is not an option: did you mean {close}?"
        super().error(message)


def option_suggestion(given: Sequence[str], options: Sequence[str]) -> tuple[str, str] | None:
    """The first unknown ``--option`` in ``given`` and the known option closest to it."""
    for arg in given:
        name = arg.partition("=")[0]
        if name[:2] != "--" or any(option.startswith(name) for option in options):
            continue  # not an option, a known one, or an abbreviation argparse accepts
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        if close:
            return name, close[0]
    return None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fieldsync", description="Offline-first sync server for field project plans."
    )
    parser.set_defaults(quiet=False, creates_database=False, check=_check_data_dir)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="migrate the database, then serve HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
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
        "--probe-port",
        type=_port,
        default=None,
        help="also answer GET /healthz and GET /metrics on this port, from threads of their "
        "own, however busy the event loop (for load balancers and scrapers; with --workers N, "
        "ports PROBE..PROBE+N-1)",
    )
    serve.add_argument(
        "--loop",
        choices=LOOP_CHOICES,
        default=DEFAULT_LOOP,
        help="the event loop: uvloop, asyncio's own, or auto (default): uvloop where it is "
        "installed",
    )
    serve.add_argument(
        "--log-format",
        choices=("auto", *LOG_FORMATS),
        default="auto",
        help="text: for people; json: one JSON object per line; auto (default): text when "
        "stderr is a terminal, else json",
    )
    serve.add_argument(
        "--slow-ms",
        type=float,
        default=500.0,
        help="log pushes and snapshots that take longer than this (default 500)",
    )
    serve.add_argument(
        "--replica-url",
        default=os.environ.get("FIELDSYNC_REPLICA_URL") or None,
        metavar="URL",
        help="a streaming replica of the database: snapshots and catch-up reads go there "
        "while it keeps up, everything else stays on the primary "
        "(default $FIELDSYNC_REPLICA_URL; see docs/scaling.md)",
    )
    serve.add_argument(
        "--replica-max-lag",
        type=_positive_float,
        default=DEFAULT_REPLICA_MAX_LAG,
        metavar="SECONDS",
        help="reads go to the primary while the replica's replay lag is over this "
        f"(default {DEFAULT_REPLICA_MAX_LAG:g})",
    )
    # Set by `serve --workers` on each worker it starts: the parent speaks for them.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve, check=_check_serve, creates_database=True)

    migrate_cmd = commands.add_parser(
        "migrate", help="apply pending schema migrations (creates the embedded database)"
    )
    migrate_cmd.set_defaults(run=_migrate, creates_database=True)

    worker = commands.add_parser(
        "worker", help="process attachments (thumbnails, location stripping, collection)"
    )
    worker.add_argument(
        "--processes", type=_positive_int, default=1, help="worker processes (default 1)"
    )
    worker.add_argument(
        "--heartbeat-seconds", type=float, default=30.0,
        help="a job whose worker is silent this long is picked up by another (default 30)",
    )  # fmt: skip
    worker.add_argument(
        "--retry-seconds", type=float, default=2.0,
        help="first retry delay of a failed try, doubled each time (default 2)",
    )  # fmt: skip
    worker.add_argument(
        "--gc-interval-seconds", type=float, default=3600.0,
        help="how often unreferenced attachments are looked for (default 3600)",
    )  # fmt: skip
    worker.add_argument(
        "--grace-seconds", type=float, default=7 * 86400.0,
        help="how long an attachment stays unreferenced before removal (default 7 days)",
    )  # fmt: skip
    worker.add_argument(
        "--upload-expiry-seconds", type=float, default=86400.0,
        help="an unfinished upload no part reached this long is removed (default 1 day)",
    )  # fmt: skip
    worker.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(run=_worker)

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
    account_list = _action(account, "list", "list accounts, oldest first", admin)
    account_list.set_defaults(run=_account_list)

    user = _group(commands, "user", "manage users")
    user_create = _action(user, "create", "create a user; prints its id", admin)
    user_create.add_argument("--name", required=True, help="the name shown to others")
    user_create.add_argument("--email", default=None, help="unique among users (optional)")
    user_create.add_argument(
        "--account", type=uuid.UUID, default=None, help="the account the user belongs to"
    )
    user_create.set_defaults(run=_user_create)
    user_list = _action(user, "list", "list users, oldest first", admin)
    user_list.add_argument(
        "--account", type=uuid.UUID, default=None, help="only the users of this account"
    )
    user_list.set_defaults(run=_user_list)

    project = _group(commands, "project", "manage projects")
    project_create = _action(project, "create", "create a project; prints its id", admin)
    project_create.add_argument(
        "--account", type=uuid.UUID, required=True, help="the account that owns it"
    )
    project_create.add_argument("--name", required=True, help="the project's name")
    project_create.set_defaults(run=_project_create)
    project_list = _action(project, "list", "list projects, oldest first", admin)
    project_list.add_argument(
        "--account", type=uuid.UUID, default=None, help="only the projects of this account"
    )
    project_list.set_defaults(run=_project_list)
    project_show = _action(
        project, "show", "show a project: its account, log head and members per level", admin
    )
    project_show.add_argument("project_id", type=uuid.UUID, metavar="ID", help="the project's id")
    project_show.set_defaults(run=_project_show)

    member = _group(commands, "member", "manage who may enter a project")
    member_add = _action(
        member, "add", "make a user a member of a project, or change their level", admin
    )
    member_remove = _action(member, "remove", "take a user out of a project", admin)
    for command in (member_add, member_remove):
        command.add_argument("--project", type=uuid.UUID, required=True, help="the project's id")
        command.add_argument("--user", type=uuid.UUID, required=True, help="the user's id")
    member_add.add_argument(
        "--level",
        required=True,
        choices=LEVELS,
        metavar="LEVEL",
        help=" | ".join(LEVELS),
    )
    member_add.set_defaults(run=_member_add)
    member_remove.set_defaults(run=_member_remove)
    member_list = _action(member, "list", "list a project's members with their levels", admin)
    member_list.add_argument("--project", type=uuid.UUID, required=True, help="the project's id")
    member_list.set_defaults(run=_member_list)

    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("--user", type=uuid.UUID, required=True, help="the user's id")
    token.add_argument(
        "--project",
        type=uuid.UUID,
        default=None,
        help="also print the link that opens the web app signed in, on this project",
    )
    token.add_argument(
        "--server-url",
        type=sync_url,
        default=None,
        metavar="URL",
        help="the server the app link names (default: the `fieldsync serve` running with "
        f"this --data-dir, else http://127.0.0.1:{DEFAULT_PORT})",
    )
    _ttl_option(token)
    token.set_defaults(run=_token)
    admin.append(token)

    demo = commands.add_parser(
        "demo", help="create a demo account and project with three users; prints their tokens"
    )
    _ttl_option(demo)
    demo.add_argument(
        "--server-url",
        type=sync_url,
        default=None,
        metavar="URL",
        help="the server the printed example connects to, e.g. http://127.0.0.1:8001 "
        "(default: the `fieldsync serve` running with this --data-dir, else "
        f"http://127.0.0.1:{DEFAULT_PORT})",
    )
    demo.set_defaults(run=_demo)
    admin.append(demo)

    contract = commands.add_parser(
        "contract", help="write the entity JSON Schema and the protocol conformance vectors"
    )
    contract.add_argument(
        "--out", type=Path, default=Path("contract"), help="the folder (default: ./contract)"
    )

    for command in admin:
        command.add_argument(
            "--json", action="store_true", help="print one JSON document instead of plain lines"
        )
        command.set_defaults(quiet=True)

    for command in (serve, migrate_cmd, rebuild, worker, *admin):
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


def write_contract(out: Path) -> int:
    """Regenerate ``out`` (``contract/``) from ``model/`` and ``sync/``; files the generators
    no longer make are removed, hand-written ones (README.md) are kept."""
    from fieldsync.model.json_schema import entity_json_schema
    from fieldsync.model.permissions import rules_description
    from fieldsync.sync.vectors import protocol_description, vector_files

    schema = json.dumps(entity_json_schema(), indent=2, ensure_ascii=False) + "\n"
    files = {
        "entities.schema.json": schema.encode(),
        "protocol.json": protocol_description(),
        "permissions.json": (json.dumps(rules_description(), indent=2) + "\n").encode(),
        **{f"vectors/{path}": data for path, data in vector_files().items()},
    }
    stale = {p for p in (out / "vectors").rglob("*") if p.is_file()} - {out / p for p in files}
    for path in stale:
        path.unlink()
    for name, data in files.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    print(f"{len(files)} files in {out}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def _ttl(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return value


def sync_url(text: str) -> str:
    """The WebSocket sync URL of a server given as http(s):// or ws(s):// (``/sync`` added)."""
    parts = urlsplit(text.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"expected a server URL such as http://127.0.0.1:{DEFAULT_PORT}, got {text!r}"
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/sync"):
        path += "/sync"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


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
        type=_ttl,
        default=DEFAULT_TOKEN_TTL,
        help="seconds until a token expires (default 12 h)",
    )


def resolve_log_format(choice: str, stream: TextIO) -> str:
    """``auto`` becomes text for a terminal, JSON for anything else (files, collectors)."""
    if choice != "auto":
        return choice
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


# --- checks before any database ----------------------------------------------------------


def _check_data_dir(args: argparse.Namespace) -> None:
    problem = data_dir_problem(args.data_dir)
    if problem is not None:
        raise CommandError(problem)


def _check_serve(args: argparse.Namespace) -> None:
    _check_data_dir(args)
    ports = range(args.port, args.port + args.workers) if args.port else range(0)
    if args.probe_port:
        probes = range(args.probe_port, args.probe_port + args.workers)
        if set(probes) & set(ports):
            raise CommandError(
                f"--probe-port {args.probe_port} overlaps the sync ports "
                f"{args.port}..{ports[-1]}: choose one outside them"
            )
        for port in probes:
            problem = listen_problem(args.host, port)
            if problem is not None:
                where = f"{args.host}:{port}"
                raise CommandError(f"cannot answer probes on {where}: {problem.strerror}")
    for port in ports:
        problem = listen_problem(args.host, port)
        if problem is None:
            continue
        if problem.errno != errno.EADDRINUSE:
            raise CommandError(f"cannot listen on {args.host}:{port}: {problem.strerror}")
        where = f"{args.host}:{port}"
        if args.workers > 1:
            where += f" (one of ports {args.port}..{ports[-1]} for --workers {args.workers})"
        free = _free_ports(args.host, args.workers, after=ports[-1])
        hint = "choose another port with --port" + (f", e.g. --port {free}" if free else "")
        raise CommandError(
            f"cannot listen on {where}: address already in use (another fieldsync serve?); {hint}"
        )


def listen_problem(host: str, port: int) -> OSError | None:
    """Why a server could not listen on ``host``:``port`` now (as uvicorn binds), or None."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"unknown host ({exc.strerror})")
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return exc
    return None


def _free_ports(host: str, count: int, after: int) -> int | None:
    """The first port above ``after`` starting ``count`` free ports in a row, if one is near."""
    for first in range(after + 1, min(after + 100, 65536 - count)):
        if all(listen_problem(host, port) is None for port in range(first, first + count)):
            return first
    return None


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
    async with await PostgresStorage.open(url, min_size=1, max_size=1) as storage:
        applied = await storage.maintenance.migrate()
    if applied:
        logger.info("applied migrations %s", ", ".join(f"{v:04d}" for v in applied))
    else:
        logger.info("database schema is up to date")


async def _migrate(args: argparse.Namespace, url: str) -> int:
    await _migrate_now(url)
    return 0


def _token_and_origin_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The serve options each worker must get too (the rest reach it through the plan)."""
    options: list[str] = ["--loop", args.loop]
    for origin in args.allowed_origin or ():
        options += ["--allowed-origin", origin]
    if args.jwks_url:
        options += ["--jwks-url", args.jwks_url, "--token-issuer", args.token_issuer]
        options += ["--token-audience", args.token_audience]
    options += ["--replica-max-lag", f"{args.replica_max_lag:g}"]
    return tuple(options)


async def _serve(args: argparse.Namespace, url: str) -> int:
    await _migrate_now(url)
    if args.workers > 1:
        from fieldsync.workers import WorkerPlan, run_workers

        _load_secret(args.data_dir)  # created once here, not raced by the workers
        if args.replica_url:  # like the primary's URL, in the environment (not in ps)
            os.environ["FIELDSYNC_REPLICA_URL"] = args.replica_url
        plan = WorkerPlan(
            args.host,
            args.port,
            args.workers,
            args.data_dir,
            args.log_format,  # resolved: workers write to the same stderr
            args.slow_ms,
            _token_and_origin_options(args),
            args.probe_port,
        )
        return await run_workers(plan, url)

    from fieldsync.auth.secret import load_secret
    from fieldsync.auth.tokens import JwksVerifier, SecretVerifier, TokenVerifier
    from fieldsync.live.open_files import connection_cap, raise_open_file_limit
    from fieldsync.live.origins import origins_from_env
    from fieldsync.observability.metrics import Metrics
    from fieldsync.server import create_app, uvicorn_config

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
    from fieldsync.media.blobs import blob_store_from_environment

    try:
        app = create_app(
            url,
            blobs=blob_store_from_environment(args.data_dir),
            verifier=verifier,
            allowed_origins=origins,
            admin_key=admin_key,
            metrics=Metrics(slow_ms=args.slow_ms),
            replica_url=args.replica_url,
            replica_max_lag=args.replica_max_lag,
            probe_address=None if args.probe_port is None else (args.host, args.probe_port),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if admin_key is not None:
        logger.info("the HTTP admin API is enabled under /admin")
    if args.replica_url:
        logger.info(
            "snapshots and catch-up reads go to the replica at %s while its lag is within %g s",
            redact_url(args.replica_url),
            args.replica_max_lag,
        )
    open_files = raise_open_file_limit()
    logger.info(
        "up to %d connections (the process may open %d files)",
        connection_cap(open_files),
        open_files,
    )
    config = uvicorn_config(app, args.host, args.port)
    config.lifespan = "on"
    config.log_config = None  # uvicorn's records go through our handler and format
    config.timeout_graceful_shutdown = GRACEFUL_SHUTDOWN_SECONDS
    record = None if args.worker else args.data_dir / SERVE_RECORD
    server = _AnnouncingServer(config, args.host, record)
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
        server.forget()
    if not server.started:
        logger.error("server did not start")
        return 1
    logger.info("stopped")
    return 0


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, saying where it listens once it does (uvicorn's own line is below
    the log level we give it), and recording that address in the data directory for `demo`.
    """

    def __init__(self, config: uvicorn.Config, host: str, record: Path | None) -> None:
        super().__init__(config)
        self._host = host
        self._record = record
        self._recorded = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        settle_collector()
        port = self.servers[0].sockets[0].getsockname()[1]
        url = http_url(self._host, port)
        logger.info(
            "listening on %s (sync clients connect to %s)", url, sync_url(url),
            extra={"event": "listening", "url": url},
        )  # fmt: skip
        if self._record is not None and self._record.parent.is_dir():
            local = http_url(_local_host(self._host), port)
            partial = self._record.with_name(f".{self._record.name}.{os.getpid()}")
            with contextlib.suppress(OSError):  # demo then falls back to the default
                partial.write_text(json.dumps({"pid": os.getpid(), "url": local}))
                partial.replace(self._record)  # readers never see half a record
                self._recorded = True

    def forget(self) -> None:
        """Remove the address record, unless another server has replaced it since."""
        if not self._recorded or self._record is None:
            return
        recorded = _read_record(self._record)
        if recorded is not None and recorded[0] == os.getpid():
            with contextlib.suppress(OSError):
                self._record.unlink()


def http_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _local_host(host: str) -> str:
    """The address a client on this machine uses for a server listening on ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _read_record(record: Path) -> tuple[int, str] | None:
    """The pid and URL a `serve` wrote into ``record``, or None if there is no valid one."""
    try:
        document = json.loads(record.read_text())
        pid, url = document["pid"], document["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or not isinstance(url, str):
        return None
    return pid, url


def served_url(data_dir: Path) -> str | None:
    """The address of the `serve` process recorded in ``data_dir``, if it still runs."""
    recorded = _read_record(data_dir / SERVE_RECORD)
    if recorded is None:
        return None
    pid, url = recorded
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it runs, as another user
    return url


# --- admin commands -------------------------------------------------------------------


@asynccontextmanager
async def _admin_storage(url: str) -> AsyncIterator[Storage]:
    """The storage at ``url``, whose schema matches this code."""
    async with await PostgresStorage.open(url, min_size=1, max_size=2) as storage:
        await storage.maintenance.check_schema()
        yield storage


def _emit(args: argparse.Namespace, lines: Sequence[str], document: Mapping[str, Any]) -> None:
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for line in lines:
            print(line)


def _load_secret(data_dir: Path, *, create: bool = True) -> bytes:
    """The token-signing secret; without ``create``, one that must exist already (a new
    random one would sign tokens no running server accepts)."""
    from fieldsync.auth.secret import SECRET_FILE, load_secret

    if not create and not os.environ.get("FIELDSYNC_SECRET"):
        path = data_dir / SECRET_FILE
        if not path.is_file():
            raise CommandError(
                f"no token secret at {path.absolute()} and FIELDSYNC_SECRET is not set: a "
                "token is signed with the secret of the server it is for; run this where "
                "`fieldsync serve` runs, or give its --data-dir"
            )
    try:
        return load_secret(data_dir)
    except (ValueError, OSError) as exc:
        raise CommandError(f"cannot load the token secret: {exc}") from exc


def _issue(secret: bytes, user_id: uuid.UUID, ttl: int) -> tuple[str, str]:
    """A token for the user and its expiry as an ISO 8601 UTC timestamp."""
    from fieldsync.auth.tokens import issue

    issued = issue(secret, user_id, ttl)
    return issued.token, issued.expires_at


async def _account_create(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        account_id = await storage.admin.create_account(args.name)
    _emit(args, [str(account_id)], {"account_id": str(account_id)})
    return 0


async def _user_create(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        user_id = await storage.admin.create_user(args.name, args.account, args.email)
    _emit(args, [str(user_id)], {"user_id": str(user_id)})
    return 0


async def _project_create(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        project_id = await storage.admin.create_project(args.account, args.name)
    _emit(args, [str(project_id)], {"project_id": str(project_id)})
    return 0


async def _member_add(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        previous = await storage.admin.add_member(args.project, args.user, args.level)
    document = {
        "project_id": str(args.project),
        "user_id": str(args.user),
        "level": args.level,
        "previous_level": previous,
    }
    _emit(args, [], document)
    return 0


async def _member_remove(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        level = await storage.admin.remove_member(args.project, args.user)
    document = {"project_id": str(args.project), "user_id": str(args.user), "removed_level": level}
    _emit(args, [], document)
    return 0


def _plain(text: str | None) -> str:
    """A name or email on one line of a table (whitespace runs become one space)."""
    return " ".join((text or "-").split())


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns under a header, the id first: for people (scripts take --json)."""
    cells = [list(header)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]  # fmt: skip


def _when(moment: Any) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


async def _account_list(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        rows = await storage.admin.list_accounts()
    table = [(r.account_id, _plain(r.name), r.projects, r.users, _when(r.created_at))
             for r in rows]  # fmt: skip
    header = ("ACCOUNT ID", "NAME", "PROJECTS", "USERS", "CREATED (UTC)")
    _emit(args, _table(header, table), {"accounts": [row_json(r) for r in rows]})
    return 0


async def _user_list(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        rows = await storage.admin.list_users(account_id=args.account)
    table = [(r.user_id, _plain(r.name), _plain(r.email), r.account_id or "-") for r in rows]
    header = ("USER ID", "NAME", "EMAIL", "ACCOUNT ID")
    _emit(args, _table(header, table), {"users": [row_json(r) for r in rows]})
    return 0


async def _project_list(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        rows = await storage.admin.list_projects(account_id=args.account)
    table = [(r.project_id, _plain(r.name), r.account_id, r.members, r.head_seq) for r in rows]
    header = ("PROJECT ID", "NAME", "ACCOUNT ID", "MEMBERS", "HEAD SEQ")
    _emit(args, _table(header, table), {"projects": [row_json(r) for r in rows]})
    return 0


async def _project_show(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        project = await storage.admin.show_project(args.project_id)
    members = ", ".join(f"{level} {n}" for level, n in project.members.items())
    lines = [
        f'Project "{_plain(project.name)}"',
        f"  project id  {project.project_id}",
        f"  account     {project.account_id}  {_plain(project.account_name)}",
        f"  created     {_when(project.created_at)} UTC",
        f"  log head    seq {project.head_seq}",
        f"  members     {members}  (fieldsync member list --project {project.project_id})",
    ]
    _emit(args, lines, row_json(project))
    return 0


async def _member_list(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        rows = await storage.admin.list_members(args.project)
    table = [(r.user_id, r.level, _plain(r.name), _plain(r.email)) for r in rows]
    header = ("USER ID", "LEVEL", "NAME", "EMAIL")
    document = {"project_id": str(args.project), "members": [row_json(r) for r in rows]}
    _emit(args, _table(header, table), document)
    return 0


async def _token(args: argparse.Namespace, url: str) -> int:
    secret = _load_secret(args.data_dir, create=False)
    async with _admin_storage(url) as storage:
        await storage.admin.require_user(args.user)
    token, expires = _issue(secret, args.user, args.ttl)
    document = {"user_id": str(args.user), "token": token, "expires_at": expires}
    lines = [token]
    if args.project is not None:
        document["app_url"] = app_link(_server_url(args)[0], token, args.project)
        lines.append(document["app_url"])
    _emit(args, lines, document)
    return 0


def app_link(server: str, token: str, project: uuid.UUID | str) -> str:
    """The link that opens the web app signed in: the token travels in the fragment, which
    browsers never send to a server, and the app removes it from the address bar."""
    parts = urlsplit(server)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    base = urlunsplit((scheme, parts.netloc, parts.path.removesuffix("/sync"), "", ""))
    query = urlencode({"token": token, "project": str(project)})
    return f"{base}/app/#{query}"


async def _demo(args: argparse.Namespace, url: str) -> int:
    from fieldsync.store.demo import create_demo

    secret = _load_secret(args.data_dir)  # a bad secret fails before anything is written
    async with _admin_storage(url) as storage:
        demo = await create_demo(storage)
    users = []
    server, _ = _server_url(args)
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
                "app_url": app_link(server, token, demo.project_id),
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
    lines = _demo_lines(document, args.ttl)
    if not args.json:
        url, source = _server_url(args)
        lines += example_lines(
            document,
            url,
            source,
            python=sys.executable,
            example=EXAMPLE if EXAMPLE.is_file() else None,
            sdk_installed=find_spec("fieldsync_client") is not None,
        )
    _emit(args, lines, document)
    return 0


def _server_url(args: argparse.Namespace) -> tuple[str, str]:
    """The sync URL the example (and the app links) should use, and where it came from."""
    if args.server_url is not None:
        return args.server_url, "--server-url"
    served = served_url(args.data_dir)
    if served is not None:
        return sync_url(served), "the `fieldsync serve` running with this --data-dir"
    default = sync_url(http_url("127.0.0.1", DEFAULT_PORT))
    return default, "no `fieldsync serve` runs with this --data-dir; else pass --server-url"


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
        f'Demo project "{demo["project_name"]}"',
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
            f"    app   {u['app_url']}",
        ]
    return lines


def example_lines(
    demo: Mapping[str, Any],
    url: str,
    source: str,
    *,
    python: str,
    example: Path | None,
    sdk_installed: bool,
) -> list[str]:
    """How to run the SDK's offline example against this demo (pure, for the output).

    The command names ``python``, the interpreter running fieldsync: a venv's python has the
    SDK the README installs, a bare ``python`` may be another one. When that interpreter
    lacks the SDK, the lines say how to install it first. ``example`` is None when this
    fieldsync is not installed from a checkout, which alone has the example.
    """
    users: list[Mapping[str, str]] = demo["users"]
    lead = next(u for u in users if u["level"] == "lead")
    other = next(u for u in users if u is not lead)
    interpreter = shlex.quote(python)
    script = "client-sdk/python/examples/offline_edit.py" if example is None else str(example)
    lines = ["", f"Edit offline with two clients and watch them merge (server {url}: {source}):"]
    if example is None:
        lines.append(f"  (from a checkout of the fieldsync repository, which has {script})")
    if not sdk_installed:
        sdk = "./client-sdk/python" if example is None else str(example.parents[1])
        lines += [
            "  This Python lacks the client SDK the example uses; install it first:",
            f"  {interpreter} -m pip install -e {shlex.quote(sdk)}",
        ]
    lines += [
        f"  {interpreter} {shlex.quote(script)} \\",
        f"    --url {url} \\",
        f"    --project {demo['project_id']} \\",
        f"    --token {lead['token']} \\",
        f"    --token2 {other['token']}",
    ]
    return lines


async def _worker(args: argparse.Namespace, url: str) -> int:
    from fieldsync.media.blobs import blob_store_from_environment
    from fieldsync.media.limits import DEFAULT_ATTACHMENT_LIMITS
    from fieldsync.media.run import run_many, run_single

    options = [
        "--data-dir", str(args.data_dir),
        "--heartbeat-seconds", f"{args.heartbeat_seconds:g}",
        "--retry-seconds", f"{args.retry_seconds:g}",
        "--gc-interval-seconds", f"{args.gc_interval_seconds:g}",
        "--grace-seconds", f"{args.grace_seconds:g}",
        "--upload-expiry-seconds", f"{args.upload_expiry_seconds:g}",
    ]  # fmt: skip
    if not args.single:
        environ = {**os.environ, "DATABASE_URL": url}
        return await run_many(args.processes, options, environ, args.data_dir)
    return await run_single(
        url, blob_store_from_environment(args.data_dir), DEFAULT_ATTACHMENT_LIMITS,
        heartbeat_seconds=args.heartbeat_seconds, retry_delay_seconds=args.retry_seconds,
        gc_interval_seconds=args.gc_interval_seconds, grace_seconds=args.grace_seconds,
        upload_expiry_seconds=args.upload_expiry_seconds,
    )  # fmt: skip


async def _rebuild(args: argparse.Namespace, url: str) -> int:
    async with _admin_storage(url) as storage:
        report = await storage.maintenance.rebuild_read_models(args.project)
    print(report)
    return 0


if __name__ == "__main__":  # how `serve --workers` starts each worker
    sys.exit(main())
