"""What a storage plugin provides: a place that keeps package blobs.

The core never builds paths or object keys itself beyond :func:`new_blob_key`;
everything else about where and how bytes live belongs to the plugin.
"""

from __future__ import annotations

import errno
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from registry.errors import InsufficientStorage, ObjectStoreException

#: errno values meaning "no room left": the disk, or the user's quota, is full.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class BlobMissing(Exception):
    """The key names no blob (raised by :meth:`Storage.open`)."""


def storage_failure(exc: OSError, what: str) -> InsufficientStorage | ObjectStoreException:
    """The client-visible error for a local disk operation that failed.

    A full disk or quota is ``InsufficientStorage`` (507: retry once space is
    freed); anything else is the storage failing (``ObjectStoreException``,
    503). ``what`` says what was being done and names no path.
    """
    if exc.errno in NO_SPACE_ERRNOS:
        return InsufficientStorage(f"{what}: {exc.strerror}")
    return ObjectStoreException(f"{what}: {exc.strerror or type(exc).__name__}")


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob, as :meth:`Storage.iter_blobs` lists it.

    :param key: the key the blob is stored under (as given to :meth:`Storage.put`).
    :param size: its length in bytes.
    :param modified: when it was last written, time-zone aware (UTC).
    """

    key: str
    size: int
    modified: datetime


def new_blob_key(code: str, module: str) -> str:
    """A fresh, never reused key for one upload's bytes.

    Every upload (overwrites included) gets a new key, so a record is switched
    to a complete blob in one transaction and the old blob removed afterwards:
    no reader ever sees a half-written object under a key a record names.
    ``code`` and ``module`` are validated slugs, safe as path segments.
    """
    return f"{code}/{module}/{uuid.uuid4().hex}"


#: What :func:`new_blob_key` makes; ``registry gc`` deletes nothing else, so
#: foreign objects in a shared bucket or folder are never taken for orphans.
BLOB_KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}/[a-z0-9][a-z0-9_-]{0,31}/[0-9a-f]{32}")


class Storage(ABC):
    """A blob store. All methods may block only inside worker threads.

    Failures of the backend itself (endpoint down, access denied) must be
    raised as :class:`registry.errors.ObjectStoreException`; a full disk or
    quota as :class:`registry.errors.InsufficientStorage` (see
    :func:`storage_failure`).
    """

    name: str = ""

    @property
    @abstractmethod
    def staging_dir(self) -> Path:
        """A local folder where the core stages incoming uploads.

        Staged files are passed to :meth:`put`; a backend that can rename
        (the filesystem) returns a folder on the same file system as its blobs.
        """

    @abstractmethod
    async def startup(self) -> None:
        """Prepare the store (create folders, check the bucket); idempotent.

        Called once before the service takes requests.
        """

    @abstractmethod
    async def check(self) -> None:
        """Raise ``ObjectStoreException`` unless the store is reachable now."""

    async def check_config(self) -> None:
        """What ``registry check-config`` runs, before :meth:`startup`: raise
        ``ObjectStoreException`` unless the store would work, creating nothing.

        The default runs :meth:`check`; a backend whose :meth:`startup`
        creates what :meth:`check` needs (folders) overrides it to accept
        their absence when they could be created.
        """
        await self.check()

    @abstractmethod
    async def put(self, staged: Path, key: str) -> None:
        """Store the complete file ``staged`` under ``key``, atomically.

        On return the blob is durable and readable under ``key``; on failure
        nothing is visible under ``key``. ``staged`` may be moved or consumed.
        """

    @abstractmethod
    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``start`` to ``end`` (exclusive; None: to the end) of a blob.

        :raises BlobMissing: no blob under ``key`` (on first iteration).
        """

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """True when a complete blob is stored under ``key``."""

    def iter_blobs(self) -> AsyncIterator[BlobInfo]:
        """Every complete blob in the store, in no particular order (optional).

        Used by ``registry gc`` to find blobs no record points to. Only blobs
        under their final keys are listed: never staging files or uploads in
        progress. Blobs put or deleted while the listing runs may or may not
        appear. Implement it as an async generator.

        :raises NotImplementedError: the backend cannot list its blobs (the
            default); ``gc`` then skips orphan collection and says so.
        """
        raise NotImplementedError(f"storage {self.name or type(self).__name__!r} cannot list its blobs")

    async def shutdown(self) -> None:
        """Release clients and pools. The default does nothing."""
        return None  # a hook with a default, not an abstract method
