"""The ``registry`` client commands: ``push``, ``push-link``, ``ls``, ``pull``.

They talk HTTP to a running registry through :class:`registry.client.RegistryClient`
and read no config file: the server and token come from ``--url``/``--token``
or ``$REGISTRY_URL``/``$REGISTRY_TOKEN``. :func:`add_client_commands` adds
them to the ``registry`` command's parser (see :mod:`registry.cli`, which also
turns their errors into exit statuses).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from registry.client import RegistryClient, file_sha256
from registry.client_transfers import DEFAULT_CHUNK_SIZE, push_link_background, push_resumable
from registry.printable import safe_json
from registry.terminal import print_table, progress_bar

URL_ENV = "REGISTRY_URL"
TOKEN_ENV = "REGISTRY_TOKEN"
LS_HEADERS = ("ID", "VERSION", "PACKAGE NAME", "SIZE", "SHA256", "CREATED", "OPERATOR")


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


def cmd_push(args: argparse.Namespace) -> int:
    """Upload a file, streamed, with its sha256 for the registry to verify."""
    path = _existing_file(args.file)
    with _client(args) as client:
        with progress_bar(f"hashing {path.name}") as progress:
            digest = file_sha256(path, progress)
        with progress_bar(f"uploading {path.name}") as progress:
            if args.resumable:
                result = push_resumable(client, path, args.app, args.module, version=args.version,
                                        overwrite=args.overwrite, sha256=digest, chunk_size=args.chunk_size,
                                        progress=progress)
            else:
                result = client.push(path, args.app, args.module, version=args.version,
                                     overwrite=args.overwrite, sha256=digest, progress=progress)
    _print_record(result.record)
    _report_upload(args, result.record, result.created)
    return 0


def cmd_push_link(args: argparse.Namespace) -> int:
    """Have the registry fetch a package from a URL."""
    with _client(args) as client:
        if args.background:
            with progress_bar("fetching on the registry") as progress:
                result = push_link_background(client, args.url_to_fetch, args.app, args.module,
                                              version=args.version, overwrite=args.overwrite, progress=progress)
        else:
            result = client.push_link(args.url_to_fetch, args.app, args.module,
                                      version=args.version, overwrite=args.overwrite)
    _print_record(result.record)
    _report_upload(args, result.record, result.created)
    return 0


def _report_upload(args: argparse.Namespace, record: dict[str, Any], created: bool) -> None:
    """One line on stderr saying what the upload did."""
    what = "stored" if created else "already stored or overwritten"
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
    """Download a package to ``-o FILE``, verified against its sha256."""
    dest = Path(args.output)
    if dest.is_dir():
        raise UsageError(f"-o {args.output}: is a folder; name the file to write")
    if not dest.parent.is_dir():
        raise UsageError(f"-o {args.output}: folder {dest.parent} does not exist")
    with _client(args) as client, progress_bar(f"downloading {dest.name}") as progress:
        result = client.pull(args.id, args.app, args.module, dest, progress=progress)
    print(f"{result.path}: {result.size} bytes, sha256 {result.sha256} verified")
    return 0


def add_client_commands(commands: Any) -> None:
    """Add ``push``, ``push-link``, ``ls`` and ``pull`` to ``commands`` (an
    ``add_subparsers()`` result), each with ``--url``/``--token`` and ``--app``/``--module``."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help=f"the registry's base URL (default: ${URL_ENV})")
    connection.add_argument("--token", help=f"access token (default: ${TOKEN_ENV})")
    module = argparse.ArgumentParser(add_help=False)
    module.add_argument("--app", required=True, metavar="CODE", help="application code")
    module.add_argument("--module", required=True, metavar="NAME", help="module name")
    upload = argparse.ArgumentParser(add_help=False)
    upload.add_argument("--version", help="version (default: from the package's app_desc.yaml)")
    upload.add_argument("--overwrite", action="store_true", help="replace that version if it holds other bytes")

    push = commands.add_parser("push", parents=[connection, module, upload],
                               help="upload a package file (streamed, sha256-verified)")
    push.add_argument("file", metavar="FILE")
    push.add_argument("--resumable", action="store_true",
                      help="upload over tus in chunks; run again after an interruption to resume")
    push.add_argument("--chunk-size", type=_chunk_size, default=DEFAULT_CHUNK_SIZE, metavar="BYTES",
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
    pull.add_argument("id", type=int, metavar="ID")
    pull.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    pull.set_defaults(func=cmd_pull)
