"""``registry backup`` and ``registry restore-backup``: the record store and what it expects of the storage.

A backup is a folder holding

- ``registry.db``: a consistent copy of the SQLite database (records,
  credentials, events), made with SQLite's online backup while the server runs;
- ``manifest.json``: ``{"format": 1, "created", "storage", "blobs": [{"key",
  "sha256", "size"}]}``, every blob the copied records point to (blobs of
  records gc purged are gone and not listed).

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
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.service import Registry

DATABASE_FILE = "registry.db"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1


class BackupError(Exception):
    """The backup cannot be made or restored; the message says why."""


@dataclass(frozen=True)
class BackupSummary:
    folder: Path
    blobs: int
    bytes: int


def _blob_entries(database: Path) -> list[dict[str, Any]]:
    """The blobs the records in ``database`` (a backup copy) point to."""
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT blob_key, sha256, package_size FROM packages WHERE purged_at IS NULL ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [{"key": key, "sha256": sha256, "size": size} for key, sha256, size in rows]


def _prepare_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BackupError(f"--to {folder}: must be a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)


def make_backup(registry: Registry, folder: Path) -> BackupSummary:
    """Write ``registry.db`` and ``manifest.json`` into the new or empty ``folder`` (blocking).

    The manifest is read from the copy, so it matches the copied records exactly.
    """
    _prepare_folder(folder)
    database = folder / DATABASE_FILE
    partial = folder / (DATABASE_FILE + ".part")
    try:
        registry.db.backup_to(partial)
        partial.replace(database)
    finally:
        partial.unlink(missing_ok=True)
    blobs = _blob_entries(database)
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "storage": registry.settings["storage.backend"],
        "database": DATABASE_FILE,
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
    if not (folder / DATABASE_FILE).is_file():
        raise BackupError(f"{folder}: {DATABASE_FILE} is missing")
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

