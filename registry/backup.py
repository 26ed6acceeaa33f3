"""``registry backup`` and ``registry restore-backup``: the record store and what it expects of the storage.

A backup is a folder holding

- the record store's copy (records, credentials, events), written by the
  store itself (:meth:`registry.store.RecordStore.backup_to`) while the server
  runs: for SQLite ``registry.db``, made with SQLite's online backup. A store
  backed up by its own tools (PostgreSQL: ``pg_dump``) refuses, naming them;
- ``manifest.json``: ``{"format": 1, "created", "storage", "database": [file
  names], "blobs": [{"key", "sha256", "size"}]}``, every blob the copied
  records point to (blobs of records gc purged are gone and not listed).

The blobs themselves stay in the storage, which is backed up by its own means
(a filesystem snapshot or ``rsync`` of the root, S3 versioning or replication);
the manifest says which blobs that copy must hold, with their sha256, so a
restore can be checked against it.

``restore-backup`` checks the storage holds every listed blob, then replaces
the configured database with the copy. It refuses to replace an existing
database unless told to (``--force``): stop every server first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.service import Registry
from registry.store import RecordStore

#: how many records the manifest reads from the copy at a time
PAGE = 500
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1


class BackupError(Exception):
    """The backup cannot be made or restored; the message says why."""


@dataclass(frozen=True)
class BackupSummary:
    folder: Path
    blobs: int
    bytes: int


def _blob_entries(copy: RecordStore) -> list[dict[str, Any]]:
    """The blobs the records in ``copy`` (the backup's store) point to, by record id."""
    entries: list[dict[str, Any]] = []
    after = 0
    while page := copy.page_by_id(after, PAGE):
        entries += [{"key": r.blob_key, "sha256": r.sha256, "size": r.package_size}
                    for r in page if r.purged_at is None]
        after = page[-1].id
    return entries


def _prepare_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BackupError(f"--to {folder}: must be a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)


def make_backup(registry: Registry, folder: Path) -> BackupSummary:
    """Write the record store's copy and ``manifest.json`` into the new or empty ``folder`` (blocking).

    The manifest is read from the copy, so it matches the copied records exactly.

    :raises BackupUnsupported: the store is backed up by its own tools.
    """
    created = not folder.exists()
    _prepare_folder(folder)
    try:
        copy = registry.records.backup_to(folder)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # leave nothing behind, as the folder was before
        raise
    try:
        blobs = _blob_entries(copy)
    finally:
        copy.close()
    database = sorted(path.name for path in folder.iterdir())
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "storage": registry.settings["storage.backend"],
        "database": database,
        "blobs": blobs,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return BackupSummary(folder, len(blobs), sum(int(b["size"]) for b in blobs))


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the backup in ``folder``; :raises BackupError: not a backup."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder}: no readable {MANIFEST_FILE}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("blobs"), list):
        raise BackupError(f"{folder / MANIFEST_FILE}: not a registry backup manifest (format {MANIFEST_FORMAT})")
    for name in manifest.get("database") or []:
        if not (folder / str(name)).is_file():
            raise BackupError(f"{folder}: {name} is missing")
    return manifest


async def missing_blobs(registry: Registry, manifest: dict[str, Any],
                        on_progress: Callable[[int, int | None], None] = lambda done, total: None) -> list[str]:
    """Keys the manifest lists that the storage does not hold (the storage must be started)."""
    missing = []
    blobs = manifest["blobs"]
    for done, blob in enumerate(blobs, start=1):
        if not await registry.storage.exists(str(blob["key"])):
            missing.append(str(blob["key"]))
        on_progress(done, len(blobs))
    return missing

