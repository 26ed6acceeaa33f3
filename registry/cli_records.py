"""Operator commands about the record store itself: ``migrate`` and ``copy-records``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from registry.settings import Settings, SettingsError, find_config_file

# The record store's model and the copier load with the command that runs
# them: every other command (``--version``, ``serve``, the client commands)
# only needs this module's parser.
if TYPE_CHECKING:
    from registry.store import RecordStore


def open_store(settings: Settings, pm: Any) -> RecordStore:
    """The record store ``settings`` select (not migrated).

    :raises SettingsError: no record-store plugin accepts ``database.url``.
    """
    store: RecordStore | None = pm.hook.registry_record_store(settings=settings)
    if store is None:
        raise SettingsError("configuration key 'database.url': no record-store plugin accepts it")
    return store


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the pending migrations (``--dry-run``: list them, change nothing)."""
    from registry.bootstrap import (
        load_settings,  # the server stack: only when a command runs
    )

    settings, pm = load_settings(find_config_file(args.config))
    store = open_store(settings, pm)
    try:
        if args.dry_run:
            pending = store.pending_migrations()
            for migration in pending:
                print(f"pending {migration.number:04d} {migration.name}")
            print(f"{store.description}: {len(pending)} migration(s) pending")
            return 0
        applied = store.migrate()
        for migration in applied:
            print(f"applied {migration.number:04d} {migration.name}")
        print(f"{store.description}: {len(applied)} migration(s) applied, schema up to date")
        return 0
    finally:
        store.close()


def cmd_copy_records(args: argparse.Namespace) -> int:
    """Copy every record, credential, event, job and upload into the store at ``--to``."""
    from registry.bootstrap import (
        load_settings,  # the server stack: only when a command runs
    )
    from registry.copy import TargetNotEmpty, copy_records

    settings, pm = load_settings(find_config_file(args.config))
    source = open_store(settings, pm)
    target_settings = Settings({**dict(settings), "database.url": args.to}, settings.source)
    target = open_store(target_settings, pm)
    if target.description == source.description:
        print("error: --to names this registry's own record store", file=sys.stderr)
        return 1
    try:
        source.migrate()
        target.migrate()
        report = copy_records(source, target, resume=args.resume)
    except TargetNotEmpty as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        source.close()
        target.close()
    print(f"copied {report.records_copied} record(s), {report.details_copied} package detail(s),"
          f" {report.credentials_copied} credential(s), {report.events_copied} event(s),"
          f" {report.jobs_copied} job(s), {report.uploads_copied} upload(s),"
          f" {report.deliveries_copied} webhook delivery(ies)"
          f" to {target.description}; {report.skipped} already there")
    return 0


def add_record_commands(commands: Any) -> None:
    """Add ``migrate`` and ``copy-records`` to the ``registry`` command."""
    migrate = commands.add_parser("migrate", help="apply (or list) pending record-store migrations")
    migrate.add_argument("--dry-run", action="store_true", help="list pending migrations; change nothing")
    migrate.set_defaults(func=cmd_migrate)

    copy = commands.add_parser("copy-records", help="copy every record, credential, event, job and upload"
                                                    " into another record store (SQLite -> PostgreSQL)")
    copy.add_argument("--to", required=True, metavar="URL", help="the target, e.g. postgresql://user@host/db")
    copy.add_argument("--resume", action="store_true",
                      help="accept a non-empty target: finish an interrupted copy (rows already there are kept)")
    copy.set_defaults(func=cmd_copy_records)
