"""A test-only storage plugin: the filesystem backend, pausing at a chosen point.

Loaded by the crash-safety tests through ``[plugins] modules`` (the way any
third-party plugin is), with ``[storage] backend = "pausing-filesystem"``.
When the environment names a pause point, the storage writes a marker file on
reaching it and then waits, so the test can SIGKILL the server at exactly that
moment. It stores blobs exactly like the built-in filesystem backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from registry_plugins.storage_filesystem import FilesystemStorage

from registry.hookspecs import hookimpl
from registry.settings import Settings
from registry.storage import Storage

NAME = "pausing-filesystem"
#: "put-after" (blob in place, record not written yet) or
#: "delete-before" (record switched, the replaced blob not deleted yet).
POINT_ENV = "REGISTRY_TEST_PAUSE_AT"
MARKER_ENV = "REGISTRY_TEST_PAUSE_MARKER"
#: The test kills the server long before this.
PAUSE_SECONDS = 60


class PausingStorage(FilesystemStorage):
    name = NAME

    async def _pause(self, point: str) -> None:
        if os.environ.get(POINT_ENV) == point:
            Path(os.environ[MARKER_ENV]).write_text(point)
            await anyio.sleep(PAUSE_SECONDS)

    async def put(self, staged: Path, key: str) -> None:
        await super().put(staged, key)
        await self._pause("put-after")

    async def delete(self, key: str) -> None:
        await self._pause("delete-before")
        await super().delete(key)


@hookimpl
def registry_storage(backend: str, settings: Settings) -> Storage | None:
    if backend != NAME:
        return None
    return PausingStorage(Path(settings["storage.filesystem.root"]))
