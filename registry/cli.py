"""The ``registry`` command: run the service, operate it, and talk to it.

Operator commands read the config file (``--config``, defaulting to
``$REGISTRY_CONFIG``, then ``./registry.toml``, then the built-in defaults):
``serve``, ``check-config``, ``token …``, ``app-secret …``, ``fsck``, ``gc``,
``events``, ``backup``, ``restore-backup``.

Client commands talk HTTP to a running registry and read no config file: the
server and token come from ``--url``/``--token`` or ``$REGISTRY_URL``/
``$REGISTRY_TOKEN``: ``push``, ``push-link``, ``ls``, ``pull``, ``rm``,
``restore``, ``apps``, ``modules``. They live in
:mod:`registry.cli_client`.

Exit status: 0 on success, 1 on any failure (the registry's ``code: detail``,
a connection or checksum failure, a problem ``fsck`` found), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from registry import __version__
from registry.cli_client import UsageError, add_client_commands
from registry.cli_records import add_record_commands
from registry.client_errors import ClientError
from registry.errors import RegistryError, ValidationError
from registry.printable import escape_unsafe
from registry.settings import (
    CONFIG_ENV,
    DEFAULT_CONFIG_NAME,
    Settings,
    SettingsError,
    find_config_file,
)
from registry.terminal import display_time, human_size, print_table, progress_bar
from registry.validation import parse_slug

# The server stack (uvicorn, starlette, boto3 through the storage plugins) is
# imported by the commands that use it, so ``registry --version`` and the
# client commands start without it.
if TYPE_CHECKING:
    from registry.gc import GcAction
    from registry.service import Registry
    from registry.store import Migration

T = TypeVar("T")


def _load(args: argparse.Namespace) -> tuple[Settings, Registry]:
    from registry.bootstrap import build_registry, load_settings

    config = find_config_file(args.config)
    settings, pm = load_settings(config)
    if config is None:
        # without a file the defaults put the database in the current folder: an
        # operator in the wrong folder must not mistake it for the server's
        print(f"note: no config file (--config, ${CONFIG_ENV}, ./{DEFAULT_CONFIG_NAME}); built-in defaults"
              f" and the environment, database {settings['database.path']}", file=sys.stderr)
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
    # Start-up makes tens of thousands of objects that live as long as the
    # process (modules, classes, the app) and no garbage cycles: the cyclic
    # collector would only walk them again and again while they are made.
    # ``serve`` freezes them and turns it back on before the first request.
    gc.disable()
    from registry.bootstrap import load_settings
    from registry.serve import ServeError, ServeOptions, serve

    settings, pm = load_settings(find_config_file(args.config))
    options = ServeOptions.from_settings(settings, args.host, args.port, args.workers)
    try:
        return serve(settings, pm, options)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status


def _never_migrated(pending: list[Migration]) -> bool:
    """Whether a store with these pending migrations holds no schema yet (a
    database the first ``serve`` or ``migrate`` will create)."""
    return bool(pending) and pending[0].number == 1


def cmd_check_config(args: argparse.Namespace) -> int:
    import asyncio

    settings, registry = _load(args)
    if settings["ui.enabled"]:
        from registry.ui.session import (
            check_session_secret,  # the web stack only where it is checked
        )

        check_session_secret(settings)  # raises SettingsError, naming the key to set
    from registry.jobs import check_sealing_key

    check_sealing_key(settings)  # reads a configured key file, creates none

    async def probe() -> list[Migration]:
        # look, create nothing: no database file or table, no storage folder
        await registry.storage.check_config()
        return await asyncio.to_thread(registry.records.pending_migrations)

    try:
        pending = asyncio.run(probe())
    except RegistryError as exc:
        print(f"error: {exc.code}: {exc.detail('en')}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 -- report any failure to reach a dependency
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    source = settings.source or "built-in defaults"
    for migration in pending:
        print(f"pending migration {migration.number:04d} {migration.name} (applied by serve or registry migrate)")
    state = "exists" if not _never_migrated(pending) else "not created yet"
    print(f"ok: {source}: database {registry.records.description} ({state}), storage {settings['storage.backend']}")
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
    token = registry.credentials.create_token(args.operator, args.app or [], args.read_only, args.expires_in)
    scope = ", ".join(args.app) if args.app else "all applications"
    print(f"token for operator {args.operator!r} ({scope}{', read-only' if args.read_only else ''}"
          f"{_lifetime(args.expires_in)}); shown once:")
    print(token)
    return 0


def cmd_app_secret_create(args: argparse.Namespace) -> int:
    _check_scope(args)
    try:
        parse_slug("app_code", args.app_code)
    except ValidationError:
        args.parser.error(f"--app-code {args.app_code!r}: 1-32 characters of a-z, 0-9, '-' and '_'")
    _, registry = _load(args)
    secret = registry.credentials.create_app_secret(args.app_code, args.app or [], args.read_only, args.expires_in)
    scope = ", ".join(args.app) if args.app else "all applications"
    print(f"secret for app code {args.app_code!r} ({scope}{_lifetime(args.expires_in)}); shown once:")
    print(secret)
    return 0


TOKEN_LIST_HEADERS = ("ID", "KIND", "NAME", "HINT", "APPS", "MODE", "CREATED", "LAST USED", "EXPIRES", "STATUS")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``: a positive number with a unit (argparse type)."""
    number, unit = value[:-1], value[-1:]
    if unit not in DURATION_UNITS or not number.isascii() or not number.isdigit() or int(number) == 0 \
            or len(number) > 6:
        raise argparse.ArgumentTypeError(f"expected a whole number with s, m, h or d, such as 90d, not {value!r}")
    return timedelta(seconds=int(number) * DURATION_UNITS[unit])


def _lifetime(expires_in: timedelta | None) -> str:
    """``, expires in 90d``, in the largest unit that divides it, as it was likely given."""
    if expires_in is None:
        return ""
    seconds = int(expires_in.total_seconds())
    unit = next(u for u, size in sorted(DURATION_UNITS.items(), key=lambda item: -item[1]) if seconds % size == 0)
    return f", expires in {seconds // DURATION_UNITS[unit]}{unit}"


def cmd_token_list(args: argparse.Namespace) -> int:
    """Every token and app secret as a table (never the secrets), or ``--json``."""
    from registry.records import utc_now

    settings, registry = _load(args)
    rows = registry.credentials.list()
    now = utc_now()
    if args.json:
        print(json.dumps([{**row.__dict__, "status": row.status(now)} for row in rows], indent=2))
        return 0
    zone = ZoneInfo(settings["server.time_zone"])
    print_table(
        TOKEN_LIST_HEADERS,
        [[str(row.id), row.kind, row.name, row.hint + "…", ",".join(row.apps) or "*",
          "read" if row.read_only else "write", display_time(row.created, zone),
          display_time(row.last_used, zone, never="never"), display_time(row.expires_at, zone, never="never"),
          row.status(now) + (f" {display_time(row.revoked_at, zone)}" if row.revoked_at else "")]
         for row in rows],
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

    import asyncio

    async def run() -> T:
        await registry.storage.startup()
        try:
            return await work()
        finally:
            await registry.storage.shutdown()

    return asyncio.run(run())


def cmd_fsck(args: argparse.Namespace) -> int:
    from registry.fsck import Problem, fsck

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


#: How ``gc`` says what it did to each kind of action (:data:`registry.gc.EXPIRE` …):
#: (verb after "would", past tense). Literal keys: importing registry.gc loads the server stack.
GC_PHRASES = {
    "expire": ("soft-delete", "soft-deleted"),
    "purge": ("remove the blob of", "removed the blob of"),
    "orphan": ("remove orphan blob", "removed orphan blob"),
    "staging": ("remove stale staging file", "removed stale staging file"),
    "upload": ("remove expired", "removed expired"),
    "unrecorded": ("remove the bytes of", "removed the bytes of"),
}
#: How the summary line counts each kind, in this order.
GC_COUNTS = {
    "expire": "version(s) soft-deleted",
    "purge": "blob(s) of deleted versions purged",
    "orphan": "orphan blob(s)",
    "staging": "staging file(s)",
    "upload": "expired resumable upload(s)",
    "unrecorded": "unrecorded upload(s)",
}
GC_RETENTION_DAYS = 30
GC_GRACE_HOURS = 1


def cmd_gc(args: argparse.Namespace) -> int:
    from registry.gc import GcOptions, collect_garbage

    settings, registry = _load(args)
    options = GcOptions(
        dry_run=args.dry_run,
        retention=timedelta(days=args.deleted_older_than),
        grace=timedelta(hours=args.grace_hours),
        keep_last=settings["retention.keep_last"] if args.keep_last is None else args.keep_last,
    )

    def show(action: GcAction) -> None:
        phrase = GC_PHRASES[action.kind]
        if action.error is not None:
            print(f"could not {phrase[0]} {action.target}: {action.error}", flush=True)
        else:
            size = f" ({human_size(action.size)})" if action.size else ""
            said = f"would {phrase[0]}" if options.dry_run else phrase[1]
            print(f"{said} {action.target}{size}", flush=True)

    report = _run_with_storage(registry, lambda: collect_garbage(registry, options, show))
    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    counts = ", ".join(f"{report.count(kind)} {GC_COUNTS[kind]}" for kind in GC_COUNTS)
    verb = "would free" if options.dry_run else "freed"
    print(f"gc{' (dry run)' if options.dry_run else ''}: {counts}; {verb} {human_size(report.freed)}")
    if report.errors:
        print(f"error: {len(report.errors)} action(s) failed", file=sys.stderr)
        return 1
    return 0


# -- operator: backup and restore ------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the database and a manifest of its blobs, while the server runs."""
    from registry.backup import BackupError, make_backup
    from registry.store import BackupUnsupported

    _, registry = _load(args)
    try:
        summary = make_backup(registry, Path(args.to))
    except (BackupError, BackupUnsupported) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"backup in {summary.folder}: database and manifest of {summary.blobs} blob(s)"
          f" ({human_size(summary.bytes)}); back up the storage's blobs by its own means")
    return 0


def cmd_restore_backup(args: argparse.Namespace) -> int:
    """Put a backup's database in place, once the storage is seen to hold its blobs."""
    from registry.backup import BackupError, missing_blobs, read_manifest
    from registry.store import BackupUnsupported

    _, registry = _load(args)
    folder = Path(args.folder)
    try:
        manifest = read_manifest(folder)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    target = registry.records.description
    if not _never_migrated(registry.records.pending_migrations()) and not args.force:
        print(f"error: database {target} exists; stop every server using it and pass --force to replace it",
              file=sys.stderr)
        return 1
    with progress_bar("checking blobs", unit="items") as progress:
        missing = _run_with_storage(registry, lambda: missing_blobs(registry, manifest, progress))
    for key in missing:
        print(f"missing blob {key}", file=sys.stderr)
    if missing and not args.allow_missing:
        print(f"error: the storage lacks {len(missing)} blob(s) the backup's records need; restore the"
              " storage first, or pass --allow-missing (fsck --repair then marks those records)", file=sys.stderr)
        return 1
    try:
        registry.records.restore_from(folder)
    except BackupUnsupported as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"restored {target} from {folder} ({len(manifest['blobs'])} blob(s) listed, {len(missing)} missing)")
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
    settings, registry = _load(args)
    events = registry.records.recent_events(limit=args.limit, code=args.app)
    zone = ZoneInfo(settings["server.time_zone"])
    if args.json:
        listed = [
            {"id": e.id, "kind": e.kind, "time": e.time.isoformat(timespec="seconds"), "operator": e.operator,
             "code": e.code, "module": e.module, "package_id": e.package_id, "version": e.version,
             "sha256": e.sha256, "package_size": e.package_size}
            for e in events
        ]
        print(json.dumps(listed, indent=2, ensure_ascii=False))
        return 0
    print_table(
        ["ID", "TIME", "EVENT", "OPERATOR", "APP/MODULE", "PACKAGE", "VERSION", "SHA256"],
        [[str(e.id), display_time(e.time, zone), e.kind, e.operator, f"{e.code}/{e.module}",
          str(e.package_id), e.version, e.sha256[:16]] for e in events],
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
    gc.add_argument("--deleted-older-than", type=_non_negative, default=GC_RETENTION_DAYS, metavar="DAYS",
                    help=f"purge blobs of records deleted this many days ago (default {GC_RETENTION_DAYS})")
    gc.add_argument("--grace-hours", type=_non_negative, default=GC_GRACE_HOURS, metavar="H",
                    help=f"leave unreferenced blobs and staging files younger than this (default {GC_GRACE_HOURS})")
    gc.add_argument("--keep-last", type=_non_negative_int, metavar="N",
                    help="override [retention] keep_last: live versions kept per module (0: all)")
    gc.set_defaults(func=cmd_gc)


def _add_backup_commands(commands: Any) -> None:
    backup = commands.add_parser("backup", help="copy the database (consistently, while serving) and list its blobs")
    backup.add_argument("--to", required=True, metavar="DIR", help="a new or empty folder")
    backup.set_defaults(func=cmd_backup)
    restore = commands.add_parser("restore-backup", help="put a backup's database in place (servers stopped)")
    restore.add_argument("folder", metavar="DIR", help="a folder made by 'registry backup'")
    restore.add_argument("--force", action="store_true", help="replace an existing database")
    restore.add_argument("--allow-missing", action="store_true",
                         help="restore even when the storage lacks some of the backup's blobs")
    restore.set_defaults(func=cmd_restore_backup)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="registry", description="Source Package Registry")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    create.add_argument("--expires-in", type=_duration, metavar="DURATION",
                        help="valid for this long: a number with s, m, h or d (90d); default: until revoked")
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
    secret_create.add_argument("--expires-in", type=_duration, metavar="DURATION",
                               help="valid for this long: a number with s, m, h or d (90d); default: until revoked")
    secret_create.set_defaults(func=cmd_app_secret_create, parser=secret_create)

    _add_maintenance_commands(commands)
    _add_backup_commands(commands)
    add_record_commands(commands)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from registry.logs import configure_logging

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
    except OSError as exc:
        # an operator command could not read its database or files: say so, no traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
