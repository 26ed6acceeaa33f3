"""Built-in storage ``filesystem``: one file per blob under ``[storage.filesystem] root``.

Uploads are staged in ``storage.staging_dir`` when it is set, else in
``<root>/.staging`` (the same file system, so committing is a rename), fsynced,
then renamed into place and the folder fsynced: a blob under its final name is
always complete. A staging folder on another file system costs a copy: the
file is copied under a dot-name beside its target, fsynced and renamed. The
root holds nothing but blob files and the default staging folder.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread

from registry.errors import ObjectStoreException
from registry.fsutil import creatable_problem
from registry.hookspecs import hookimpl
from registry.settings import Setting, Settings
from registry.storage import (
    BlobInfo,
    BlobMissing,
    BlockingStorage,
    Storage,
    storage_failure,
)
from registry.transfers import READERS, download_chunk_size, read_cached, wait

NAME = "filesystem"
STAGING_FOLDER = ".staging"
#: The key that names the root, in errors about it.
ROOT_KEY = "storage.filesystem.root"
READ_SIZE = 1024 * 1024
LIST_BATCH = 512


class FilesystemStorage(Storage):
    name = NAME

    def __init__(self, root: Path, staging_dir: Path | None = None) -> None:
        """:param staging_dir: where uploads are staged; None for ``<root>/.staging``."""
        self.root = root
        self._staging_dir = staging_dir if staging_dir is not None else root / STAGING_FOLDER
        # Blob folders whose own entries, up to the root, this process has
        # synced: a put into any other folder syncs them first (see put_blocking).
        self._synced_folders: set[Path] = set()

    @property
    def staging_dir(self) -> Path:
        return self._staging_dir

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root.joinpath(*parts)

    async def startup(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._make_folders)
        except OSError as exc:
            raise storage_failure(exc, f"{ROOT_KEY}: cannot create {self.root}") from exc

    def _make_folders(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    async def check(self) -> None:
        def probe() -> None:
            if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
                raise ObjectStoreException(f"{ROOT_KEY}: {self.root} is not a writable folder")

        await anyio.to_thread.run_sync(probe)

    async def check_config(self) -> None:
        """The root is a writable folder, or could be made one by :meth:`startup`."""

        def probe() -> None:
            if self.root.is_dir():
                if not os.access(self.root, os.W_OK | os.X_OK):
                    raise ObjectStoreException(f"{ROOT_KEY}: {self.root} is not a writable folder")
                return
            problem = creatable_problem(self.root / ".staging")
            if problem is not None:
                raise ObjectStoreException(f"{ROOT_KEY}: {problem}")

        await anyio.to_thread.run_sync(probe)

    async def put(self, staged: Path, key: str) -> None:
        await anyio.to_thread.run_sync(self.put_blocking, staged, key)

    def put_blocking(self, staged: Path, key: str) -> None:
        """:meth:`put` in the calling thread."""
        target = self._path(key)

        def move() -> None:
            folder = target.parent
            made = _make_folders(folder)
            try:
                os.replace(staged, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_into_place(staged, target)
            # The rename is durable once its folder is synced; the folder
            # itself once its parent is, and so on up to the root. Those are
            # synced by the first put into a folder this process has not seen
            # synced, whoever made it: a concurrent upload that made it may
            # not have synced its parent yet when this one's record commits.
            # One made now is new whatever was synced before (it went away).
            _fsync_dir(folder)
            if made or folder not in self._synced_folders:
                for parent in folder.parents:
                    _fsync_dir(parent)
                    if parent == self.root:
                        break
                self._synced_folders.add(folder)

        try:
            move()
        except OSError as exc:  # a full disk (a new folder needs a block) is a 507
            raise storage_failure(exc, "cannot store blob") from exc

    def blocking(self) -> BlockingStorage | None:
        # Only where put and delete are this class's own: a subclass that adds
        # to them (a pause, a fault) keeps its own way for every upload.
        cls = type(self)
        if cls.put is FilesystemStorage.put and cls.delete is FilesystemStorage.delete:
            return self
        return None

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream the blob in chunks of :func:`registry.transfers.download_chunk_size`:
        straight from the page cache when it holds them (never waiting for the
        disk), else by the shared reader pool; the next chunk is read only once
        the caller asks for it, so a download holds one chunk at a time."""
        path = self._path(key)
        # Opening, seeking and the first read are one thread hand-off, and a
        # blob that fits in it (most packages are small) is also closed there:
        # a small download costs one hand-off, not five.
        opening = READERS.submit(_open_and_read, path, start, end, download_chunk_size())
        try:
            fd, chunk, done = await wait(opening)
        except FileNotFoundError:
            raise BlobMissing(key) from None
        except OSError as exc:
            raise ObjectStoreException(f"cannot read blob: {exc.strerror}") from exc
        except BaseException:  # cancelled while the pool opens it: close what it opens
            opening.add_done_callback(_close_opened)
            raise
        if done:
            if chunk:
                yield chunk
            return
        reading: Future[bytes] | None = None
        try:
            offset = start + len(chunk)
            yield chunk
            while end is None or offset < end:
                size = download_chunk_size() if end is None else min(download_chunk_size(), end - offset)
                cached = read_cached(fd, size, offset)
                if not cached:  # not in the page cache, or an empty answer only a real read may confirm
                    reading = READERS.submit(os.pread, fd, size, offset)
                    chunk = await wait(reading)
                    reading = None
                else:
                    chunk = cached
                if not chunk:
                    break
                offset += len(chunk)
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                if reading is not None:  # cancelled mid-read: let it end before the file is closed
                    with contextlib.suppress(OSError):
                        await wait(reading)
                await READERS.run(os.close, fd)

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(self.delete_blocking, key)

    def delete_blocking(self, key: str) -> None:
        """:meth:`delete` in the calling thread."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise ObjectStoreException(f"cannot delete blob: {exc.strerror}") from exc

    async def exists(self, key: str) -> bool:
        path = self._path(key)
        return await anyio.to_thread.run_sync(path.is_file)

    async def iter_blobs(self) -> AsyncIterator[BlobInfo]:
        # The walk blocks, so it runs in worker threads a batch at a time:
        # a store of millions of blobs is never listed into memory at once.
        walk = _walk(self.root, "")
        while True:
            try:
                batch = await anyio.to_thread.run_sync(lambda: list(itertools.islice(walk, LIST_BATCH)))
            except OSError as exc:
                raise ObjectStoreException(f"cannot list blobs: {exc.strerror}") from exc
            if not batch:
                return
            for info in batch:
                yield info


def _walk(folder: Path, prefix: str) -> Iterator[BlobInfo]:
    """Regular files under ``folder`` as blobs, skipping dot-names (the staging
    folder; :meth:`FilesystemStorage._path` never makes such keys) and symlinks."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        key = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), key + "/")
        elif entry.is_file(follow_symlinks=False):
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted while we walk
                continue
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            yield BlobInfo(key=key, size=stat.st_size, modified=modified)


def _close_opened(opening: Future[tuple[int, bytes, bool]]) -> None:
    """Close the descriptor an :func:`_open_and_read` nobody waited for left open."""
    if opening.cancelled() or opening.exception() is not None:
        return
    fd, _, done = opening.result()
    if not done:
        os.close(fd)


def _open_and_read(path: Path, start: int, end: int | None, size: int) -> tuple[int, bytes, bool]:
    """Open ``path`` and read its first ``size`` bytes from ``start`` (at most
    up to ``end``): the open descriptor, the chunk, and whether that was all of
    it, in which case the descriptor is closed already."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = size if end is None else min(size, end - start)
        chunk = os.pread(fd, size, start)
        done = len(chunk) < size or (end is not None and start + len(chunk) >= end)
    except BaseException:
        os.close(fd)
        raise
    if done:
        os.close(fd)
    return fd, chunk, done


def _make_folders(folder: Path) -> bool:
    """``mkdir -p folder``; whether it did not exist."""
    if folder.is_dir():  # as for every upload but a module's first: one stat, no mkdir
        return False
    folder.mkdir(parents=True, exist_ok=True)
    return True


def _copy_into_place(staged: Path, target: Path) -> None:
    """Copy ``staged`` (on another file system) to ``target``: under a dot-name
    first, which listings skip, fsynced, then renamed, so ``target`` is never
    seen incomplete."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with staged.open("rb") as source, temporary.open("wb") as copy:
            shutil.copyfileobj(source, copy, READ_SIZE)
            copy.flush()
            os.fsync(copy.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    staged.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@hookimpl
def registry_settings() -> list[Setting]:
    return [Setting("storage.filesystem.root", "str", "var/packages", "Folder holding the package blobs.", path=True)]


@hookimpl
def registry_storage(backend: str, settings: Settings) -> Storage | None:
    if backend != NAME:
        return None
    staging = settings["storage.staging_dir"]
    return FilesystemStorage(Path(settings["storage.filesystem.root"]), Path(staging) if staging else None)
