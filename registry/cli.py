"""The ``registry`` command: run the service, operate it, and talk to it.

Operator commands read the config file (``--config``, defaulting to
``$REGISTRY_CONFIG``, then ``./registry.toml``, then the built-in defaults):
``serve``, ``check-config``, ``token …``, ``app-secret …``, ``fsck``, ``gc``.

Client commands talk HTTP to a running registry and read no config file: the
server and token come from ``--url``/``--token`` or ``$REGISTRY_URL``/
``$REGISTRY_TOKEN``: ``push``, ``push-link``, ``ls``, ``pull``. They live in
:mod:`registry.cli_client`.

Exit status: 0 on success, 1 on any failure (the registry's ``code: detail``,
a connection or checksum failure, a problem ``fsck`` found), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from registry.bootstrap import build_registry, load_settings
from registry.cli_client import UsageError, add_client_commands
from registry.client import ClientError
from registry.errors import RegistryError, ValidationError
from registry.fsck import Problem, fsck
from registry.gc import DEFAULT_GRACE, DEFAULT_RETENTION, GcAction, GcOptions, collect_garbage
from registry.logs import configure_logging
from registry.printable import escape_unsafe
from registry.service import Registry
from registry.settings import Settings, SettingsError, find_config_file
from registry.terminal import human_size, print_table, progress_bar
from registry.validation import parse_slug

T = TypeVar("T")


def _load(args: argparse.Namespace) -> tuple[Settings, Registry]:
    settings, pm = load_settings(find_config_file(args.config))
    return settings, build_registry(settings, pm)


def _port_flag(text: str) -> int:
    """``--port``: checked like ``server.port`` (argparse exits 2 naming the flag)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def _host_flag(text: str) -> str:
    """``--host``: checked like ``server.host``."""
    from registry.serve import host_problem

    problem = host_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _workers_flag(text: str) -> int:
    """``--workers``: checked like ``server.workers`` (0: one per core)."""
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if workers < 0:
        raise argparse.ArgumentTypeError("must be 0 (one per core) or more")
    return workers


def cmd_serve(args: argparse.Namespace) -> int:
    from registry.serve import ServeError, ServeOptions, serve

    settings, pm = load_settings(find_config_file(args.config))
    options = ServeOptions.from_settings(settings, args.host, args.port, args.workers)
    try:
        return serve(settings, pm, options)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status


def cmd_check_config(args: argparse.Namespace) -> int:
    settings, registry = _load(args)

    async def probe() -> None:
        await registry.storage.startup()
        await registry.check_ready()
        await registry.storage.shutdown()

    try:
        asyncio.run(probe())
    except RegistryError as exc:
        print(f"error: {exc.code}: {exc.detail('en')}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    source = settings.source or "built-in defaults"
    print(f"ok: {source}: database {settings['database.path']}, storage {settings['storage.backend']}")
    return 0


def _check_scope(args: argparse.Namespace) -> None:
    """Refuse application codes no request could ever use (exit 2 via argparse)."""
    for code in args.app or []:
        try:
            parse_slug("app", code)
        except ValidationError:
            args.parser.error(f"--app {code!r}: 1-32 characters of a-z, 0-9, '-' and '_', starting alphanumeric")


def cmd_token_create(args: argparse.Namespace) -> int:
    _check_scope(args)
    if not args.operator.strip() or len(args.operator) > 64 or not args.operator.isprintable():
        args.parser.error("--operator: a printable name of 1-64 characters")
    _, registry = _load(args)
    token = registry.credentials.create_token(args.operator, args.app or [], args.read_only)
    scope = ", ".join(args.app) if args.app else "all applications"
    print(f"token for operator {args.operator!r} ({scope}{', read-only' if args.read_only else ''}); shown once:")
    print(token)
    return 0


def cmd_app_secret_create(args: argparse.Namespace) -> int:
    _check_scope(args)
    try:
        parse_slug("app_code", args.app_code)
    except ValidationError:
        args.parser.error(f"--app-code {args.app_code!r}: 1-32 characters of a-z, 0-9, '-' and '_'")
    _, registry = _load(args)
    secret = registry.credentials.create_app_secret(args.app_code, args.app or [], args.read_only)
    scope = ", ".join(args.app) if args.app else "all applications"
    print(f"secret for app code {args.app_code!r} ({scope}); shown once:")
    print(secret)
    return 0


TOKEN_LIST_HEADERS = ("ID", "KIND", "NAME", "HINT", "APPS", "MODE", "STATUS")


def cmd_token_list(args: argparse.Namespace) -> int:
    """Every token and app secret as a table (never the secrets), or ``--json``."""
    _, registry = _load(args)
    rows = registry.credentials.list()
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    print_table(
        TOKEN_LIST_HEADERS,
        [[str(row.id), row.kind, row.name, row.hint + "…", ",".join(row.apps) or "*",
          "read" if row.read_only else "write",
          f"revoked {row.revoked_at[:19]}" if row.revoked_at else "active"] for row in rows],
        right=["ID"],
    )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    _, registry = _load(args)
    if not registry.credentials.revoke(args.id):
        print(f"error: no active credential with id {args.id}", file=sys.stderr)
        return 1
    print(f"revoked credential {args.id}")
    return 0


# -- operator: fsck and gc ------------------------------------------------------------


def _run_with_storage(registry: Registry, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` with the storage started, as the server would have it.

    Only the storage is started: :meth:`Registry.startup` would also empty the
    staging folder, killing the uploads of a server running beside us.
    """

    async def run() -> T:
        await registry.storage.startup()
        try:
            return await work()
        finally:
            await registry.storage.shutdown()

    return asyncio.run(run())


def cmd_fsck(args: argparse.Namespace) -> int:
    _, registry = _load(args)

    def show(problem: Problem) -> None:
        print(problem.describe(), flush=True)

    with progress_bar("checking blobs") as progress:
        report = _run_with_storage(
            registry, lambda: fsck(registry, repair=args.repair, on_problem=show, on_progress=progress)
        )
    summary = (f"fsck: {report.checked} blob(s) checked ({human_size(report.bytes_read)}),"
               f" {len(report.problems)} problem(s)")
    if report.purged:
        summary += f", {report.purged} purged record(s) skipped"
    if args.repair:
        summary += f"; marked {report.marked} record(s) broken, cleared {report.cleared}"
    print(summary)
    return 1 if report.problems else 0


def cmd_gc(args: argparse.Namespace) -> int:
    settings, registry = _load(args)
    options = GcOptions(
        dry_run=args.dry_run,
        retention=timedelta(days=args.deleted_older_than),
        grace=timedelta(hours=args.grace_hours),
        keep_last=settings["retention.keep_last"] if args.keep_last is None else args.keep_last,
    )
    prefix = "would " if options.dry_run else ""

    def show(action: GcAction) -> None:
        if action.error is not None:
            print(f"failed {action.kind} {action.target}: {action.error}", flush=True)
        else:
            size = f" ({human_size(action.size)})" if action.size else ""
            print(f"{prefix}{action.kind} {action.target}{size}", flush=True)

    report = _run_with_storage(registry, lambda: collect_garbage(registry, options, show))
    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    counts = ", ".join(f"{report.count(kind)} {kind}" for kind in ("expire", "purge", "orphan", "staging"))
    verb = "would free" if options.dry_run else "freed"
    print(f"gc{' (dry run)' if options.dry_run else ''}: {counts}; {verb} {human_size(report.freed)}")
    if report.errors:
        print(f"error: {len(report.errors)} action(s) failed", file=sys.stderr)
        return 1
    return 0


# -- the parser --------------------------------------------------------------------------


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return number


def _non_negative_int(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, not {value!r}")
    return int(value)


def cmd_events(args: argparse.Namespace) -> int:
    """The audit trail the ``audit`` plugin keeps, newest first."""
    from plugins.audit import recent_events

    _, registry = _load(args)
    events = recent_events(registry.db, limit=args.limit, code=args.app)
    if args.json:
        print(json.dumps(events, indent=2, ensure_ascii=False))
        return 0
    print_table(
        ["ID", "TIME", "EVENT", "OPERATOR", "APP/MODULE", "PACKAGE", "VERSION", "SHA256"],
        [[str(e["id"]), e["time"], e["kind"], e["operator"], f"{e['code']}/{e['module']}", str(e["package_id"]),
          e["version"], e["sha256"][:16]] for e in events],
        right=["ID", "PACKAGE"],
    )
    return 0


def _add_maintenance_commands(commands: Any) -> None:
    events = commands.add_parser("events", help="list package events (stored, overwritten, deleted, restored)")
    events.add_argument("--app", metavar="CODE", help="only this application's events")
    events.add_argument("--limit", type=_non_negative_int, default=100, help="newest N events (default 100)")
    events.add_argument("--json", action="store_true", help="print JSON")
    events.set_defaults(func=cmd_events)

    check = commands.add_parser("fsck", help="re-hash every stored blob against its record")
    check.add_argument("--repair", action="store_true",
                       help="mark bad records broken (download then answers 503); clear marks of good ones")
    check.set_defaults(func=cmd_fsck)

    gc = commands.add_parser("gc", help="remove blobs of old deleted records, orphan blobs and stale staging files")
    gc.add_argument("--dry-run", action="store_true", help="report what would be removed; change nothing")
    gc.add_argument("--deleted-older-than", type=_non_negative, default=DEFAULT_RETENTION.days, metavar="DAYS",
                    help=f"purge blobs of records deleted this many days ago (default {DEFAULT_RETENTION.days})")
    gc.add_argument("--grace-hours", type=_non_negative, default=DEFAULT_GRACE.total_seconds() / 3600,
                    metavar="H", help="leave unreferenced blobs and staging files younger than this (default 1)")
    gc.add_argument("--keep-last", type=_non_negative_int, metavar="N",
                    help="override [retention] keep_last: live versions kept per module (0: all)")
    gc.set_defaults(func=cmd_gc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="registry", description="Source Package Registry")
    parser.add_argument("--config", help="TOML file (default: $REGISTRY_CONFIG, then ./registry.toml)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", type=_host_flag, help="listen address (default: server.host)")
    serve.add_argument("--port", type=_port_flag, help="listen port (default: server.port)")
    serve.add_argument("--workers", type=_workers_flag, metavar="N",
                       help="processes sharing the port (default: server.workers; 0: one per core)")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate the config and reach the database and storage")
    check.set_defaults(func=cmd_check_config)

    token = commands.add_parser("token", help="manage access tokens").add_subparsers(
        dest="token_command", required=True, metavar="ACTION")
    create = token.add_parser("create", help="make a token; printed once, on the last line")
    create.add_argument("--operator", required=True, help="name recorded as the operator of its writes")
    create.add_argument("--app", action="append", metavar="CODE", help="limit to this application (repeatable)")
    create.add_argument("--read-only", action="store_true", help="allow reads only")
    create.set_defaults(func=cmd_token_create, parser=create)
    listing = token.add_parser("list", help="list tokens and app secrets (never the secrets)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_token_list)
    revoke = token.add_parser("revoke", help="revoke a token or app secret by id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=cmd_token_revoke)

    secret = commands.add_parser("app-secret", help="manage app secrets").add_subparsers(
        dest="secret_command", required=True, metavar="ACTION")
    secret_create = secret.add_parser("create", help="make an app secret; printed once, on the last line")
    secret_create.add_argument("--app-code", required=True, help="the bk_app_code that sends the secret")
    secret_create.add_argument("--app", action="append", metavar="CODE", help="limit to this application (repeatable)")
    secret_create.add_argument("--read-only", action="store_true", help="allow reads only")
    secret_create.set_defaults(func=cmd_app_secret_create, parser=secret_create)

    _add_maintenance_commands(commands)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    # httpx logs every request at INFO: noise in a client command's output
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (SettingsError, ClientError) as exc:
        print(f"error: {escape_unsafe(str(exc))}", file=sys.stderr)  # a registry's detail quotes client data
        return 1
    except RegistryError as exc:
        print(f"error: {exc.code}: {exc.detail('en')}", file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError) as exc:
        # an operator command could not read its database or files: say so, no traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
