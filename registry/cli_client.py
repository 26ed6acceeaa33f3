"""The ``registry`` client commands: ``push``, ``push-link``, ``ls``, ``pull``,
``rm``, ``restore``, ``apps`` and ``modules``.

They talk HTTP to a running registry through :class:`registry.client.RegistryClient`
and read no config file: the server and token come from ``--url``/``--token``
or ``$REGISTRY_URL``/``$REGISTRY_TOKEN``. :func:`add_client_commands` adds
them to the ``registry`` command's parser (see :mod:`registry.cli`, which also
turns their errors into exit statuses).

The HTTP client (httpx) is imported only when a command runs, so building the
parser, ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.client_errors import ApiError, ClientError
from registry.printable import safe_json
from registry.terminal import print_table, progress_bar

if TYPE_CHECKING:
    from registry.client import RegistryClient

URL_ENV = "REGISTRY_URL"
TOKEN_ENV = "REGISTRY_TOKEN"
#: The platform's name for an application's first module.
DEFAULT_MODULE = "default"
LS_HEADERS = ("ID", "VERSION", "PACKAGE NAME", "SIZE", "SHA256", "CREATED", "OPERATOR")
#: What ``push`` says on stderr for each ``Registry-Upload-Outcome``.
OUTCOME_WORDS = {
    "created": "created",
    "revived": "revived (a deleted version stored again)",
    "overwritten": "overwritten (the version now holds these bytes)",
    "identical": "identical to the stored bytes; nothing changed",
}


class UsageError(Exception):
    """The command line is incomplete or contradictory (exit status 2)."""


def _client(args: argparse.Namespace) -> RegistryClient:
    """A client for ``--url``/``$REGISTRY_URL`` with ``--token``/``$REGISTRY_TOKEN``.

    :raises UsageError: no URL, or not an http(s) one.
    """
    url = args.url or os.environ.get(URL_ENV, "")
    if not url:
        raise UsageError(f"no registry URL: pass --url or set {URL_ENV}")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must be an http:// or https:// URL, not {url!r}")
    from registry.client import RegistryClient

    return RegistryClient(url, args.token or os.environ.get(TOKEN_ENV) or None)


def _print_record(record: dict[str, Any]) -> None:
    """The record as the registry answered it, as indented JSON on stdout."""
    print(safe_json(record, indent=2))


def _chunk_size(value: str) -> int:
    """``--chunk-size``: a positive number of bytes, optionally with K, M or G (powers of 1024)."""
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or not 0 < int(digits) * scale <= 1024**3:
        raise argparse.ArgumentTypeError(f"{value!r} is not a chunk size from 1 byte to 1G")
    return int(digits) * scale


def _existing_file(value: str) -> Path:
    """``value`` as a path; :raises UsageError: it does not name a file."""
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"{value}: not a file")
    return path


def _with_way_out(exc: ApiError) -> ClientError:
    """A conflict names the flag that resolves it; other errors pass unchanged."""
    if exc.code == "PACKAGE_ALREADY_EXISTS":
        stored = exc.body.get("data", {}).get("sha256_signature") if isinstance(exc.body.get("data"), dict) else None
        held = f" (it holds sha256 {stored})" if stored else ""
        return ClientError(f"{exc}{held}; pass --overwrite to replace it")
    return exc


def cmd_push(args: argparse.Namespace) -> int:
    """Upload a file, streamed, with its sha256 for the registry to verify."""
    from registry.client import file_sha256
    from registry.client_transfers import DEFAULT_CHUNK_SIZE, push_resumable

    path = _existing_file(args.file)
    with _client(args) as client:
        with progress_bar(f"hashing {path.name}") as progress:
            digest = file_sha256(path, progress)
        with progress_bar(f"uploading {path.name}") as progress:
            try:
                if args.resumable:
                    result = push_resumable(client, path, args.app, args.module, version=args.version,
                                            overwrite=args.overwrite, sha256=digest, chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE,
                                            progress=progress)
                else:
                    result = client.push(path, args.app, args.module, version=args.version,
                                         overwrite=args.overwrite, sha256=digest, progress=progress)
            except ApiError as exc:
                raise _with_way_out(exc) from exc
    _print_record(result.record)
    _report_upload(args, result.record, result.outcome)
    return 0


def cmd_push_link(args: argparse.Namespace) -> int:
    """Have the registry fetch a package from a URL."""
    from registry.client_transfers import push_link_background

    with _client(args) as client:
        try:
            if args.background:
                with progress_bar("fetching on the registry") as progress:
                    result = push_link_background(client, args.url_to_fetch, args.app, args.module,
                                                  version=args.version, overwrite=args.overwrite,
                                                  progress=progress)
            else:
                result = client.push_link(args.url_to_fetch, args.app, args.module,
                                          version=args.version, overwrite=args.overwrite)
        except ApiError as exc:
            raise _with_way_out(exc) from exc
    _print_record(result.record)
    _report_upload(args, result.record, result.outcome)
    return 0


def _report_upload(args: argparse.Namespace, record: dict[str, Any], outcome: str) -> None:
    """One line on stderr saying what the upload did."""
    what = OUTCOME_WORDS.get(outcome, outcome)
    print(f"{args.app}/{args.module} version {record.get('version')}: {what}, id {record.get('id')}",
          file=sys.stderr)


def cmd_ls(args: argparse.Namespace) -> int:
    """A module's packages as a table, or ``--json`` the records as the registry answered them."""
    with _client(args) as client:
        records = client.list(args.app, args.module, include_deleted=args.include_deleted)
    if args.json:
        print(safe_json(records, indent=2))
        return 0
    # a terminal gets a short digest to fit the screen; a pipe gets all of it
    digest_length = 12 if sys.stdout.isatty() else 64
    headers = [*LS_HEADERS, "DELETED"] if args.include_deleted else list(LS_HEADERS)
    rows = []
    for r in records:
        row = [str(r["id"]), r["version"], r["package_name"], str(r["package_size"]),
               r["sha256_signature"][:digest_length], r["created"], r["operator"]]
        if args.include_deleted:
            row.append("yes" if r["is_deleted"] else "no")
        rows.append(row)
    print_table(headers, rows, right=("ID", "SIZE"))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Download a package to ``-o FILE`` (default: the package's file name), verified against its sha256."""
    dest = Path(args.output) if args.output else None
    if dest is not None:
        if dest.is_dir():
            raise UsageError(f"-o {args.output}: is a folder; name the file to write")
        if not dest.parent.is_dir():
            raise UsageError(f"-o {args.output}: folder {dest.parent} does not exist")
    with _client(args) as client:
        record = client.resolve(args.ref, args.app, args.module)
        with progress_bar(f"downloading {dest.name if dest else record['package_name']}") as progress:
            result = client.pull(record["id"], args.app, args.module, dest, progress=progress)
    print(f"{result.path}: {result.size} bytes, sha256 {result.sha256} verified")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Soft-delete a package (``registry restore`` undoes it until ``gc`` purges it)."""
    with _client(args) as client:
        record = client.resolve(args.ref, args.app, args.module)
        client.delete(record["id"], args.app, args.module)
    print(f"deleted {args.app}/{args.module} version {record['version']}, id {record['id']}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Undo a soft delete; prints the restored record."""
    with _client(args) as client:
        record = client.resolve(args.ref, args.app, args.module, include_deleted=True)
        restored = client.restore(record["id"], args.app, args.module)
    _print_record(restored)
    print(f"restored {args.app}/{args.module} version {restored.get('version')}, id {restored.get('id')}",
          file=sys.stderr)
    return 0


def cmd_apps(args: argparse.Namespace) -> int:
    """The applications the token may read."""
    with _client(args) as client:
        apps = client.applications()
    if args.json:
        print(safe_json(apps, indent=2))
        return 0
    print_table(("APP", "MODULES", "PACKAGES", "LAST UPLOADED"),
                [[a["code"], str(a["modules"]), str(a["packages"]), a.get("last_uploaded") or "-"] for a in apps],
                right=("MODULES", "PACKAGES"))
    return 0


def cmd_modules(args: argparse.Namespace) -> int:
    """An application's modules."""
    with _client(args) as client:
        modules = client.modules(args.app)
    if args.json:
        print(safe_json(modules, indent=2))
        return 0
    print_table(("MODULE", "PACKAGES", "LAST UPLOADED"),
                [[m["name"], str(m["packages"]), m.get("last_uploaded") or "-"] for m in modules],
                right=("PACKAGES",))
    return 0


def add_client_commands(commands: Any) -> None:
    """Add the client commands to ``commands`` (an ``add_subparsers()`` result),
    each with ``--url``/``--token``, and ``--app``/``--module`` where they name a module."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help=f"the registry's base URL (default: ${URL_ENV})")
    connection.add_argument("--token", help=f"access token (default: ${TOKEN_ENV})")
    module = argparse.ArgumentParser(add_help=False)
    module.add_argument("--app", required=True, metavar="CODE", help="application code")
    module.add_argument("--module", default=DEFAULT_MODULE, metavar="NAME",
                        help=f"module name (default: {DEFAULT_MODULE})")
    upload = argparse.ArgumentParser(add_help=False)
    upload.add_argument("--version", help="version (default: from the package's app_desc.yaml)")
    upload.add_argument("--overwrite", action="store_true", help="replace that version if it holds other bytes")
    ref_help = "package id, version, or 'latest' (a number is an id when such a package exists)"

    push = commands.add_parser("push", parents=[connection, module, upload],
                               help="upload a package file (streamed, sha256-verified)")
    push.add_argument("file", metavar="FILE")
    push.add_argument("--resumable", action="store_true",
                      help="upload over tus in chunks; run again after an interruption to resume")
    push.add_argument("--chunk-size", type=_chunk_size, default=None, metavar="BYTES",
                      help="bytes per chunk with --resumable (default 8 MiB; K, M, G suffixes allowed)")
    push.set_defaults(func=cmd_push)

    push_link = commands.add_parser("push-link", parents=[connection, module, upload],
                                    help="have the registry fetch a package from a URL")
    push_link.add_argument("url_to_fetch", metavar="URL")
    push_link.add_argument("--background", action="store_true",
                           help="fetch as a background job, showing its progress; exits with its result")
    push_link.set_defaults(func=cmd_push_link)

    ls = commands.add_parser("ls", parents=[connection, module], help="list a module's packages, newest first")
    ls.add_argument("--include-deleted", action="store_true", help="show soft-deleted packages too")
    ls.add_argument("--json", action="store_true", help="print the records as JSON")
    ls.set_defaults(func=cmd_ls)

    pull = commands.add_parser("pull", parents=[connection, module],
                               help="download a package, verified against its sha256")
    pull.add_argument("ref", metavar="ID|VERSION|latest", help=ref_help)
    pull.add_argument("-o", "--output", metavar="FILE",
                      help="file to write (default: the package's file name, in the current folder)")
    pull.set_defaults(func=cmd_pull)

    rm = commands.add_parser("rm", parents=[connection, module], help="soft-delete a package (restorable)")
    rm.add_argument("ref", metavar="ID|VERSION", help=ref_help)
    rm.set_defaults(func=cmd_rm)

    restore = commands.add_parser("restore", parents=[connection, module], help="undo a soft delete")
    restore.add_argument("ref", metavar="ID|VERSION", help=ref_help)
    restore.set_defaults(func=cmd_restore)

    apps = commands.add_parser("apps", parents=[connection], help="list the applications the token may read")
    apps.add_argument("--json", action="store_true", help="print JSON")
    apps.set_defaults(func=cmd_apps)

    modules = commands.add_parser("modules", parents=[connection], help="list an application's modules")
    modules.add_argument("--app", required=True, metavar="CODE", help="application code")
    modules.add_argument("--json", action="store_true", help="print JSON")
    modules.set_defaults(func=cmd_modules)
