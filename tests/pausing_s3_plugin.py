"""A test-only storage plugin: the S3 backend, pausing once a blob is stored.

Loaded through ``[plugins] modules`` with ``[storage] backend =
"pausing-s3"``. When ``REGISTRY_TEST_PAUSE_AT`` is ``put-after``, the storage
writes the marker file named by ``REGISTRY_TEST_PAUSE_MARKER`` once a blob is
in the bucket (its record not written yet) and then waits, so the test can
crash what it likes at exactly that moment. Otherwise it is the S3 backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from registry_plugins import storage_s3
from registry_plugins.storage_s3 import S3Storage

from registry.hookspecs import hookimpl
from registry.settings import Settings
from registry.storage import Storage
from tests.crash_plugin import MARKER_ENV, PAUSE_SECONDS, POINT_ENV

NAME = "pausing-s3"


class PausingS3(S3Storage):
    async def put(self, staged: Path, key: str) -> None:
        await super().put(staged, key)
        if os.environ.get(POINT_ENV) == "put-after":
            Path(os.environ[MARKER_ENV]).write_text("put-after")
            await anyio.sleep(PAUSE_SECONDS)


@hookimpl
def registry_storage(backend: str, settings: Settings) -> Storage | None:
    if backend != NAME:
        return None
    storage = storage_s3.registry_storage(backend=storage_s3.NAME, settings=settings)
    assert isinstance(storage, S3Storage)
    storage.__class__ = PausingS3  # the same object, built from the same settings
    return storage
