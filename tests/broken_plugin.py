"""A test-only storage plugin with a bug: storing a blob raises ``RuntimeError``.

Loaded through ``[plugins] modules`` with ``[storage] backend =
"broken-filesystem"``, it makes every upload end in the service's 500
``INTERNAL_ERROR`` (an unexpected exception), which the connection tests need
on a live server.
"""

from __future__ import annotations

from pathlib import Path

from registry_plugins.storage_filesystem import FilesystemStorage

from registry.hookspecs import hookimpl
from registry.settings import Settings
from registry.storage import Storage

NAME = "broken-filesystem"


class BrokenStorage(FilesystemStorage):
    name = NAME

    async def put(self, staged: Path, key: str) -> None:
        raise RuntimeError("a bug in a storage plugin")


@hookimpl
def registry_storage(backend: str, settings: Settings) -> Storage | None:
    if backend != NAME:
        return None
    return BrokenStorage(Path(settings["storage.filesystem.root"]))
