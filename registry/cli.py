"""The ``registry`` command: run the service and manage its credentials.

``registry [--config FILE] serve | check-config | token … | app-secret …``.
``--config`` defaults to ``$REGISTRY_CONFIG``, then ``./registry.toml``, then
the built-in defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from registry.bootstrap import build_registry, load_settings
from registry.errors import RegistryError
from registry.service import Registry
from registry.settings import Settings, SettingsError, find_config_file


def _load(args: argparse.Namespace) -> tuple[Settings, Registry]:
    settings, pm = load_settings(find_config_file(args.config))
    return settings, build_registry(settings, pm)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from registry.app import create_app

    settings, registry = _load(args)
    host = args.host or settings["server.host"]
    port = args.port if args.port is not None else settings["server.port"]
    uvicorn.run(
        create_app(registry),
        host=host,
        port=port,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=10,
        proxy_headers=False,
    )
    return 0


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
    except Exception as exc:  # noqa: BLE001 - report any failure to reach a dependency
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    source = settings.source or "built-in defaults"
    print(f"ok: {source}: database {settings['database.path']}, storage {settings['storage.backend']}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    _, registry = _load(args)
    token = registry.credentials.create_token(args.operator, args.app or [], args.read_only)
    scope = ", ".join(args.app) if args.app else "all applications"
    print(f"token for operator {args.operator!r} ({scope}{', read-only' if args.read_only else ''}); shown once:")
    print(token)
    return 0


def cmd_app_secret_create(args: argparse.Namespace) -> int:
    _, registry = _load(args)
    secret = registry.credentials.create_app_secret(args.app_code, args.app or [], args.read_only)
    scope = ", ".join(args.app) if args.app else "all applications"
    print(f"secret for app code {args.app_code!r} ({scope}); shown once:")
    print(secret)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    _, registry = _load(args)
    rows = registry.credentials.list()
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    print(f"{'ID':>4}  {'KIND':<10}  {'NAME':<24}  {'HINT':<10}  {'APPS':<24}  {'MODE':<5}  STATUS")
    for row in rows:
        apps = ",".join(row.apps) or "*"
        status = f"revoked {row.revoked_at[:19]}" if row.revoked_at else "active"
        mode = "read" if row.read_only else "write"
        print(f"{row.id:>4}  {row.kind:<10}  {row.name:<24}  {row.hint + '…':<10}  {apps:<24}  {mode:<5}  {status}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    _, registry = _load(args)
    if not registry.credentials.revoke(args.id):
        print(f"error: no active credential with id {args.id}", file=sys.stderr)
        return 1
    print(f"revoked credential {args.id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="registry", description="Source Package Registry")
    parser.add_argument("--config", help="TOML file (default: $REGISTRY_CONFIG, then ./registry.toml)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="listen address (default: server.host)")
    serve.add_argument("--port", type=int, help="listen port (default: server.port)")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate the config and reach the database and storage")
    check.set_defaults(func=cmd_check_config)

    token = commands.add_parser("token", help="manage access tokens").add_subparsers(
        dest="token_command", required=True, metavar="ACTION")
    create = token.add_parser("create", help="make a token; printed once, on the last line")
    create.add_argument("--operator", required=True, help="name recorded as the operator of its writes")
    create.add_argument("--app", action="append", metavar="CODE", help="limit to this application (repeatable)")
    create.add_argument("--read-only", action="store_true", help="allow reads only")
    create.set_defaults(func=cmd_token_create)
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
    secret_create.set_defaults(func=cmd_app_secret_create)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
