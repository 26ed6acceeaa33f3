"""Built-in origin ``file``: ``file:///abs/path`` under ``[origins.file] allowed_roots``.

The path is resolved (symlinks and ``..``) before it is compared with the
roots, which are resolved too, so neither a link nor a dot-dot leaves them. No
roots configured means no path is allowed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from registry.errors import PackageDownloadFailed, SourceOriginForbidden
from registry.hookspecs import hookimpl
from registry.origins import Download, Origin
from registry.redact import redact_url
from registry.settings import Setting, Settings

NAME = "file"
READ_SIZE = 1024 * 1024


class FileOrigin(Origin):
    """Reads ``file://`` URLs naming a regular file under ``allowed_roots``
    (compared after resolving links and ``..``; no roots: nothing allowed).

    :meth:`open` raises ``SourceOriginForbidden`` for a remote host, a
    relative path or one outside the roots, and ``PackageDownloadFailed``
    when the file is missing, unreadable or not a regular file. The
    download's ``size`` is the file's size.
    """

    name = NAME

    def __init__(self, allowed_roots: list[str]) -> None:
        self.allowed_roots = [Path(os.path.realpath(root)) for root in allowed_roots]

    def accepts(self, url: str) -> bool:
        return url[:7].lower() == "file://"

    def _within_roots(self, resolved: Path) -> bool:
        return any(resolved == root or root in resolved.parents for root in self.allowed_roots)

    def _allowed_path(self, url: str) -> Path:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise SourceOriginForbidden("file URLs must name a local path (file:///...)")
        raw = unquote(parts.path)
        if "\x00" in raw or not raw.startswith("/"):
            raise SourceOriginForbidden("file URLs must hold an absolute path")
        resolved = Path(os.path.realpath(raw))
        if not self._within_roots(resolved):
            raise SourceOriginForbidden("the path is outside the allowed roots")
        return resolved

    def _open_regular(self, path: Path) -> int:
        """Open ``path`` for reading, refusing anything but a regular file.

        ``O_NONBLOCK`` keeps a FIFO from blocking the open until a writer
        comes; ``O_NOFOLLOW`` refuses a final component swapped for a link
        after the check. Where ``/proc/self/fd`` exists, the file actually
        opened is checked against the roots once more, so a folder swapped for
        a link between check and open cannot lead outside them either.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PackageDownloadFailed(f"no such file: {path}") from None
        except OSError as exc:
            raise PackageDownloadFailed(f"cannot open {path}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PackageDownloadFailed(f"not a regular file: {path}")
            proc_link = f"/proc/self/fd/{fd}"
            if os.path.islink(proc_link) and not self._within_roots(Path(os.readlink(proc_link))):
                raise SourceOriginForbidden("the path is outside the allowed roots")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_allowed(self, url: str) -> tuple[BinaryIO, int]:
        """The file ``url`` names, open, and its size (blocking: resolving
        the path and opening it touch the disk)."""
        fd = self._open_regular(self._allowed_path(url))
        return os.fdopen(fd, "rb"), os.fstat(fd).st_size

    @asynccontextmanager
    async def open(self, url: str, max_size: int) -> AsyncIterator[Download]:
        f, size = await anyio.to_thread.run_sync(self._open_allowed, url)
        try:
            # the name the link asked for, not that of a symlink's target
            yield Download(chunks=_read(f), size=size, file_name=Path(unquote(urlsplit(url).path)).name,
                           display_url=redact_url(url))
        finally:
            f.close()


async def _read(f: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(f.read, READ_SIZE):
        yield chunk


@hookimpl
def registry_settings() -> list[Setting]:
    return [
        Setting("origins.file.allowed_roots", "list[str]", [],
                "Folders `file://` URLs may read from; empty allows none.", path=True),
    ]


@hookimpl
def registry_origins(settings: Settings) -> list[Origin]:
    return [FileOrigin(settings["origins.file.allowed_roots"])]
