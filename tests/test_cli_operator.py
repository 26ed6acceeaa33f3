"""Operator commands (token list/revoke, fsck, gc), run as subprocesses beside a live registry.

Tests that damage or collect storage start their own registry in ``tmp_path``
so the session's shared server stays clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from registry.auth import CACHE_SECONDS
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    blob_files,
    merge,
    package,
    registry_command,
    start_registry,
)

TWO_HOURS = 2 * 3600


def run(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return subprocess.run([*registry_command(), *args], capture_output=True, text=True, timeout=60, env=clean, check=False)


class Scratch:
    """A registry of the test's own, with an API client and its storage root."""

    def __init__(self, server: RegistryProcess, root: Path) -> None:
        self.server = server
        self.packages = root / "packages"
        self.api = Api(server.url, server.token())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run("--config", str(self.server.config), *args)

    def upload(self, code: str, version: str, salt: str = "") -> tuple[int, bytes]:
        """Upload a package; its id and bytes."""
        data = package(salt=f"{code}-{version}-{salt}")
        response = self.api.upload(code, data, version=version)
        assert response.status_code in (200, 201), response.text
        return response.json()["id"], data

    def blob_of(self, data: bytes) -> Path:
        """The blob file holding exactly ``data``."""
        [found] = [p for p in blob_files(self.packages) if p.read_bytes() == data]
        return found

    def blob_count(self) -> int:
        return len(list(blob_files(self.packages)))


@contextmanager
def scratch_registry(root: Path, **tables: dict[str, object]) -> Iterator[Scratch]:
    server = start_registry(root, merge(base_config(root), tables))
    scratch = Scratch(server, root)
    try:
        yield scratch
    finally:
        scratch.api.close()
        server.stop()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    with scratch_registry(tmp_path / "registry") as registry:
        yield registry


def age(path: Path, seconds: float) -> None:
    """Set ``path``'s modification time ``seconds`` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# -- token list / revoke ------------------------------------------------------------------


def test_token_list_never_shows_secrets_and_revoke_takes_effect(registry: RegistryProcess, code: str) -> None:
    operator = f"carol-{code}"  # unique: other tests make tokens on the shared registry too
    secret = registry.token(operator, apps=(code,), read_only=True)
    config = ["--config", str(registry.config)]

    listing = run(*config, "token", "list")
    assert listing.returncode == 0, listing.stderr
    assert secret not in listing.stdout
    [line] = [line for line in listing.stdout.splitlines() if f" {operator} " in line]
    assert code in line and "read" in line and "active" in line
    assert secret[:8] in line  # the hint

    entries = json.loads(run(*config, "token", "list", "--json").stdout)
    [carol] = [e for e in entries if e["name"] == operator]
    assert carol["apps"] == [code] and carol["read_only"] is True and carol["revoked_at"] is None
    assert secret not in json.dumps(entries)

    reads = ["ls", "--app", code, "--module", "default", "--url", registry.url, "--token", secret]
    assert run(*reads).returncode == 0

    revoked = run(*config, "token", "revoke", str(carol["id"]))
    assert revoked.returncode == 0, revoked.stderr
    listing = run(*config, "token", "list")
    [line] = [line for line in listing.stdout.splitlines() if f" {operator} " in line]
    assert "revoked" in line

    # the running server lets go of its cached check within CACHE_SECONDS
    deadline = time.monotonic() + CACHE_SECONDS + 10
    refused = run(*reads)
    while refused.returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        refused = run(*reads)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr

    again = run(*config, "token", "revoke", str(carol["id"]))
    assert again.returncode == 1
    assert f"no active credential with id {carol['id']}" in again.stderr


# -- fsck -----------------------------------------------------------------------------------


def test_fsck_reports_corrupt_and_missing_blobs_and_repair_marks_them(scratch: Scratch) -> None:
    good_id, _ = scratch.upload("shop", "1.0.0")
    corrupt_id, corrupt_data = scratch.upload("shop", "1.1.0")
    deleted_id, deleted_data = scratch.upload("shop", "0.9.0")
    assert scratch.api.delete("shop", deleted_id).status_code == 204

    clean = scratch.cli("fsck")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "3 blob(s) checked" in clean.stdout and "0 problem(s)" in clean.stdout

    corrupt_blob = scratch.blob_of(corrupt_data)
    corrupt_blob.write_bytes(corrupt_data[:-1] + bytes([corrupt_data[-1] ^ 0x01]))
    scratch.blob_of(deleted_data).unlink()
    corrupt_key = corrupt_blob.relative_to(scratch.packages).as_posix()

    found = scratch.cli("fsck")
    assert found.returncode == 1
    lines = found.stdout.splitlines()
    assert f"SHA256: id {corrupt_id} shop/default version 1.1.0 key {corrupt_key}: " in found.stdout
    assert any(line.startswith(f"MISSING: id {deleted_id} shop/default version 0.9.0 (deleted) key shop/default/")
               for line in lines)
    assert not any(f"id {good_id} " in line for line in lines)
    assert "2 problem(s)" in lines[-1]
    # without --repair nothing changes: the damaged bytes are still served
    assert scratch.api.download("shop", corrupt_id).status_code == 200

    repaired = scratch.cli("fsck", "--repair")
    assert repaired.returncode == 1
    assert "marked 2 record(s) broken" in repaired.stdout
    refused = scratch.api.download("shop", corrupt_id)
    assert refused.status_code == 503
    assert refused.json()["code"] == "OBJECT_STORE_EXCEPTION"
    assert scratch.api.download("shop", good_id).status_code == 200

    # uploading the version's bytes again heals it, even without allow_overwrite
    healed = scratch.api.upload("shop", corrupt_data, version="1.1.0")
    assert healed.status_code == 200, healed.text
    assert healed.json()["id"] == corrupt_id
    download = scratch.api.download("shop", corrupt_id)
    assert download.status_code == 200 and download.content == corrupt_data

    remaining = scratch.cli("fsck", "--repair")
    assert remaining.returncode == 1
    assert f"id {corrupt_id} " not in remaining.stdout
    assert f"MISSING: id {deleted_id} " in remaining.stdout


def test_fsck_clears_the_mark_when_the_blob_is_restored(scratch: Scratch) -> None:
    package_id, data = scratch.upload("shop", "2.0.0")
    blob = scratch.blob_of(data)
    blob.write_bytes(b"damaged")
    assert scratch.cli("fsck", "--repair").returncode == 1
    assert scratch.api.download("shop", package_id).status_code == 503

    blob.write_bytes(data)  # back from a backup
    restored = scratch.cli("fsck", "--repair")
    assert restored.returncode == 0, restored.stdout
    assert "cleared 1" in restored.stdout
    assert scratch.api.download("shop", package_id).content == data


# -- gc -------------------------------------------------------------------------------------


def test_gc_collects_stale_leftovers_and_purges_old_deleted_records(scratch: Scratch) -> None:
    kept_id, kept_data = scratch.upload("shop", "2.0.0")
    purged_id, purged_data = scratch.upload("shop", "1.0.0")
    assert scratch.api.delete("shop", purged_id).status_code == 204
    kept_blob, purged_blob = scratch.blob_of(kept_data), scratch.blob_of(purged_data)

    stale_orphan = scratch.packages / "shop" / "default" / ("a" * 32)
    recent_orphan = scratch.packages / "shop" / "default" / ("b" * 32)
    staging = scratch.packages / ".staging"
    stale_upload, live_upload = staging / "upload-stale.part", staging / "upload-live.part"
    foreign = scratch.packages / "shop" / "notes.txt"  # not a registry blob key: never collected
    for path in (stale_orphan, recent_orphan, stale_upload, live_upload, foreign):
        path.write_bytes(b"leftover")
    for path in (stale_orphan, stale_upload, foreign):
        age(path, TWO_HOURS)
    everything = (kept_blob, purged_blob, stale_orphan, recent_orphan, stale_upload, live_upload, foreign)

    dry = scratch.cli("gc", "--dry-run", "--deleted-older-than", "0")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove the blob of id {purged_id} shop/default version 1.0.0" in dry.stdout
    assert f"would remove orphan blob key shop/default/{'a' * 32}" in dry.stdout
    assert "would remove stale staging file " in dry.stdout and "upload-stale.part" in dry.stdout
    assert "b" * 32 not in dry.stdout and "upload-live.part" not in dry.stdout
    assert all(path.exists() for path in everything)

    # the default retention (30 days) keeps a record deleted just now
    default = scratch.cli("gc")
    assert default.returncode == 0, default.stderr
    assert purged_blob.exists() and "0 blob(s) of deleted versions purged" in default.stdout
    assert not stale_orphan.exists() and not stale_upload.exists()
    stale_orphan.write_bytes(b"leftover")
    age(stale_orphan, TWO_HOURS)

    collected = scratch.cli("gc", "--deleted-older-than", "0")
    assert collected.returncode == 0, collected.stderr
    assert not purged_blob.exists() and not stale_orphan.exists()
    assert kept_blob.exists() and recent_orphan.exists() and live_upload.exists() and foreign.exists()
    assert "left 1 unreferenced object(s) alone" in collected.stderr
    assert re.search(r"gc: 0 version\(s\) soft-deleted, 1 blob\(s\) of deleted versions purged,"
                     r" 1 orphan blob\(s\), 0 staging file\(s\), 0 expired resumable upload\(s\), 0 unrecorded upload\(s\); freed", collected.stdout)
    assert f"removed the blob of id {purged_id} shop/default version 1.0.0" in collected.stdout

    # the purged record stays, deleted; it cannot be restored, only uploaded again
    listed = scratch.api.list("shop", include_deleted="true").json()["results"]
    assert [(r["id"], r["is_deleted"]) for r in listed if r["id"] == purged_id] == [(purged_id, True)]
    restore = scratch.api.restore("shop", purged_id)
    assert restore.status_code == 404 and restore.json()["code"] == "PACKAGE_NOT_FOUND"
    assert scratch.api.download("shop", purged_id).status_code == 404
    assert scratch.cli("fsck").returncode == 0  # purged records are not missing blobs
    revived = scratch.api.upload("shop", purged_data, version="1.0.0")
    assert revived.status_code == 201 and revived.json()["id"] == purged_id
    assert scratch.api.download("shop", purged_id).content == purged_data
    assert scratch.api.download("shop", kept_id).content == kept_data


def test_gc_keep_last(tmp_path: Path) -> None:
    with scratch_registry(tmp_path / "registry", retention={"keep_last": 2}) as scratch:
        ids = [scratch.upload("shop", f"1.{n}")[0] for n in range(4)]
        other_id, _ = scratch.upload("cart", "1.0")

        dry = scratch.cli("gc", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would soft-delete id {ids[0]} shop/default version 1.0 (keep_last 2)" in dry.stdout
        assert f"would soft-delete id {ids[1]} " in dry.stdout
        assert len(scratch.api.list("shop").json()["results"]) == 4

        expired = scratch.cli("gc")
        assert expired.returncode == 0, expired.stderr
        assert f"soft-deleted id {ids[0]} shop/default version 1.0 (keep_last 2)" in expired.stdout
        live = [r["id"] for r in scratch.api.list("shop").json()["results"]]
        assert live == [ids[3], ids[2]]
        assert [r["id"] for r in scratch.api.list("cart").json()["results"]] == [other_id]
        # soft-deleted, not purged: restorable until the retention passes
        assert scratch.blob_count() == 5

        purged = scratch.cli("gc", "--deleted-older-than", "0")
        assert purged.returncode == 0, purged.stderr
        assert scratch.blob_count() == 3
        assert scratch.api.restore("shop", ids[0]).status_code == 404

        # --keep-last overrides the config
        assert scratch.cli("gc", "--keep-last", "1", "--deleted-older-than", "0").returncode == 0
        assert [r["id"] for r in scratch.api.list("shop").json()["results"]] == [ids[3]]
        assert scratch.blob_count() == 2


def test_gc_keeps_every_blob_a_record_points_to_however_old(scratch: Scratch) -> None:
    """Blobs of live and deleted (not yet purged) records are never orphans."""
    live_id, live_data = scratch.upload("shop", "1.0")
    deleted_id, deleted_data = scratch.upload("shop", "0.1")
    assert scratch.api.delete("shop", deleted_id).status_code == 204
    for blob in blob_files(scratch.packages):
        age(blob, 400 * 24 * 3600)
    result = scratch.cli("gc", "--grace-hours", "0")
    assert result.returncode == 0, result.stderr
    assert scratch.blob_of(live_data).exists() and scratch.blob_of(deleted_data).exists()
    assert scratch.api.download("shop", live_id).content == live_data


# -- backup and restore-backup ----------------------------------------------------------------


def test_backup_while_serving_and_restore(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    with scratch_registry(root) as scratch:
        kept_id, kept = scratch.upload("shop", "1.0")
        gone_id, gone = scratch.upload("shop", "2.0")
        backup = tmp_path / "backup"
        made = scratch.cli("backup", "--to", str(backup))
        assert made.returncode == 0, made.stderr
        assert "manifest of 2 blob(s)" in made.stdout
        manifest = json.loads((backup / "manifest.json").read_text())
        assert manifest["format"] == 1 and manifest["storage"] == "filesystem"
        assert sorted(b["sha256"] for b in manifest["blobs"]) == sorted(
            hashlib.sha256(d).hexdigest() for d in (kept, gone))
        for blob in manifest["blobs"]:
            assert (scratch.packages / blob["key"]).read_bytes() in (kept, gone)
        # the copy opens as a database on its own
        with sqlite3.connect(backup / "registry.db") as db:
            assert db.execute("SELECT count(*) FROM packages").fetchone()[0] == 2
        assert scratch.cli("backup", "--to", str(backup)).returncode == 1  # never into a used folder

        # changes after the backup: a deletion and a new version
        assert scratch.api.delete("shop", gone_id).status_code == 204
        scratch.upload("shop", "3.0")
        refused = scratch.cli("restore-backup", str(backup))
        assert refused.returncode == 1 and "--force" in refused.stderr
    # servers stopped: restore
    restored = run("--config", str(scratch.server.config), "restore-backup", str(backup), "--force")
    assert restored.returncode == 0, restored.stderr
    with scratch_registry(root) as again:
        versions = sorted((r["version"], r["is_deleted"]) for r in again.api.list("shop").json()["results"])
        assert versions == [("1.0", False), ("2.0", False)]
        assert again.api.download("shop", kept_id).content == kept
        assert again.api.download("shop", gone_id).content == gone
        assert again.cli("fsck").returncode == 0


def test_restore_refuses_a_backup_whose_blobs_are_missing(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    with scratch_registry(root) as scratch:
        _, data = scratch.upload("shop", "1.0")
        assert scratch.cli("backup", "--to", str(tmp_path / "backup")).returncode == 0
        scratch.blob_of(data).unlink()
    config = str(scratch.server.config)
    result = run("--config", config, "restore-backup", str(tmp_path / "backup"), "--force")
    assert result.returncode == 1
    assert "missing blob shop/default/" in result.stderr and "lacks 1 blob(s)" in result.stderr
    assert run("--config", config, "restore-backup", str(tmp_path), "--force").returncode == 1  # not a backup
    allowed = run("--config", config, "restore-backup", str(tmp_path / "backup"), "--force", "--allow-missing")
    assert allowed.returncode == 0, allowed.stderr


def test_gc_command_defaults_are_the_collectors() -> None:
    """The command states its defaults without importing the collector (start-up time): they must agree."""
    from datetime import timedelta

    from registry import cli, gc

    assert timedelta(days=cli.GC_RETENTION_DAYS) == gc.DEFAULT_RETENTION
    assert timedelta(hours=cli.GC_GRACE_HOURS) == gc.DEFAULT_GRACE
