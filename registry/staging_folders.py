"""Per-process staging folders, held with a lock, swept only when abandoned.

Every serving process stages its uploads in a folder of its own under the
storage's staging folder (``proc-<host>-<pid>-<random>``) and holds an
exclusive ``flock`` on the ``.lock`` file inside it for as long as it lives.
The kernel drops the lock when the process ends, however it ends (SIGKILL
included), so at start-up a process may remove exactly the folders whose lock
it can take: nobody alive holds them. A folder a live process holds, on this
host or on another sharing the file system (NFS emulates ``flock`` with POSIX
locks, which the server arbitrates), is never touched.

Files directly in the staging folder are from releases that staged there;
the start-up sweep still removes them (:func:`registry.staging.sweep_staging`).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
from pathlib import Path

PREFIX = "proc-"
LOCK_NAME = ".lock"


class HeldFolder:
    """A staging folder this process holds until :meth:`release`."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._fd: int | None = lock_fd

    def release(self) -> None:
        """Remove the folder (only this process ever wrote to it) and drop the lock."""
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = None


def _try_lock(lock_file: Path, create: bool) -> int | None:
    """An open descriptor of ``lock_file`` holding an exclusive flock, or None
    when another process holds it (or it vanished meanwhile)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(lock_file, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def claim(base: Path) -> HeldFolder:
    """Blocking: create and lock a fresh folder of this process under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    host = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())[:64]
    path = base / f"{PREFIX}{host}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    fd = _try_lock(path / LOCK_NAME, create=True)
    if fd is None:  # a fresh random name: nobody else can hold it
        raise OSError(f"cannot lock the new staging folder {path}")
    return HeldFolder(path, fd)


def sweep_abandoned(base: Path, keep: Path | None = None) -> int:
    """Blocking: remove every process folder under ``base`` that no live
    process holds (except ``keep``, our own); return how many.

    A folder without a lock file is being created by its process right now
    (``mkdir`` then lock) or was left half-made; it is removed only once its
    lock file exists and is free, so a starting process is never raced.
    """
    return len(abandoned_folders(base, keep))


def abandoned_folders(base: Path, keep: Path | None = None, *, created_before: float | None = None,
                      remove: bool = True) -> list[tuple[Path, int]]:
    """Blocking: the process folders under ``base`` no live process holds
    (except ``keep``), each with the bytes of the files in it, removed unless
    ``remove`` is false (a dry run: each is only locked for a moment).

    :param created_before: only folders whose lock file was made before this
        ``time.time()`` (``registry gc``'s grace period: the lock file is
        never written after its process made it).
    """
    if not base.is_dir():
        return []
    found: list[tuple[Path, int]] = []
    for entry in base.iterdir():
        if not entry.name.startswith(PREFIX) or entry == keep or entry.is_symlink() or not entry.is_dir():
            continue
        lock_file = entry / LOCK_NAME
        if created_before is not None:
            try:
                if lock_file.stat().st_mtime >= created_before:
                    continue
            except FileNotFoundError:
                continue
        fd = _try_lock(lock_file, create=False)
        if fd is None:
            continue
        try:
            size = sum(child.stat().st_size for child in entry.rglob("*")
                       if child.is_file() and not child.is_symlink() and child.name != LOCK_NAME)
            if remove:
                _empty_and_remove(entry)
            found.append((entry, size))
        except OSError:
            pass  # another sweeper got there first; it is gone either way
        finally:
            os.close(fd)
    return found


def _empty_and_remove(entry: Path) -> None:
    """Remove a process folder whose lock we hold: files first, the lock file
    last, so a process reading the folder as we go sees it held until the end."""
    for child in entry.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (entry / LOCK_NAME).unlink(missing_ok=True)
    entry.rmdir()
