"""The registry on PostgreSQL: ``migrate``, ``check-config``, ``copy-records``, a served
flow end to end, and a database that goes away and comes back."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import psycopg
from registry_plugins.postgres_store import MIGRATIONS as POSTGRES_MIGRATIONS
from registry_plugins.postgres_store import PostgresStore
from registry_plugins.store_sqlite import MIGRATIONS as SQLITE_MIGRATIONS

from registry.testing import assert_counts_exact
from tests.helpers import (
    Api,
    base_config,
    package,
    registry_command,
    start_registry,
    to_toml,
)

PASSWORD = "pw-never-shown-4711"


def with_password(url: str) -> str:
    """``url`` with a password: the test cluster trusts loopback, so it is ignored, but
    the registry must still keep it out of every line it prints."""
    return url.replace("registry@", f"registry:{PASSWORD}@", 1)


def pg_config(root: Path, url: str) -> dict[str, dict[str, Any]]:
    tables = base_config(root)
    tables["database"] = {"url": with_password(url), "pool_size": 4, "timeout": 3}
    # required with a database server: instances share no folder to keep a generated key in
    tables["ui"] = {"session_secret": "test-session-secret-shared-by-every-instance"}
    return tables


def run(config: Path, *args: str) -> Any:
    import subprocess
    return subprocess.run([*registry_command(), "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def write_config(root: Path, tables: dict[str, dict[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "registry.toml"
    config.write_text(to_toml(tables))
    return config


def test_migrate_and_check_config_on_sqlite_create_nothing_until_asked(tmp_path: Path) -> None:
    config = write_config(tmp_path, base_config(tmp_path))
    check = run(config, "check-config")
    assert check.returncode == 0, check.stderr
    assert "pending migration 0001" in check.stdout
    assert not (tmp_path / "registry.db").exists(), "check-config creates nothing"
    dry = run(config, "migrate", "--dry-run")
    assert dry.returncode == 0 and f"{len(SQLITE_MIGRATIONS)} migration(s) pending" in dry.stdout
    assert not (tmp_path / "registry.db").exists()
    applied = run(config, "migrate")
    assert applied.returncode == 0 and "applied 0004 package_details table and browse index" in applied.stdout
    with sqlite3.connect(tmp_path / "registry.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
    again = run(config, "migrate", "--dry-run")
    assert "0 migration(s) pending" in again.stdout
    assert "pending" not in run(config, "check-config").stdout.replace("0 migration(s) pending", "")


def test_migrate_and_check_config_on_postgres_never_show_the_password(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path, pg_config(tmp_path, pg_url))
    check = run(config, "check-config")
    assert check.returncode == 0, check.stderr
    assert "pending migration 0001" in check.stdout and "postgresql 127.0.0.1" in check.stdout
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('packages')").fetchone() == (None,)
    assert f"{len(POSTGRES_MIGRATIONS)} migration(s) applied" in run(config, "migrate").stdout
    assert "0 migration(s) pending" in run(config, "migrate", "--dry-run").stdout
    broken = dict(pg_config(tmp_path, pg_url))
    broken["database"] = {**broken["database"], "url": with_password(pg_url).replace("/t_", "/missing_")}
    failed = run(write_config(tmp_path / "broken", broken), "check-config")
    assert failed.returncode == 1 and "DATABASE_UNAVAILABLE" in failed.stderr
    for result in (check, failed):
        assert PASSWORD not in result.stdout + result.stderr


def test_backup_on_postgres_names_pg_dump_and_writes_nothing(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path, pg_config(tmp_path, pg_url))
    assert run(config, "migrate").returncode == 0
    backup = run(config, "backup", "--to", str(tmp_path / "backup"))
    assert backup.returncode == 1
    assert "pg_dump" in backup.stderr and "Traceback" not in backup.stderr
    assert PASSWORD not in backup.stdout + backup.stderr
    assert not (tmp_path / "backup").exists(), "a refused backup leaves no folder behind"


def test_served_on_postgres_the_main_flow_works(tmp_path: Path, pg_url: str) -> None:
    server = start_registry(tmp_path, pg_config(tmp_path, pg_url))
    try:
        api = Api(server.url, server.token("alice"))
        first = package("1.0.0", salt="a")
        created = api.upload("pgapp", first, version="1.0.0")
        assert created.status_code == 201, created.text
        record = created.json()
        assert api.upload("pgapp", first, version="1.0.0").status_code == 200
        conflict = api.upload("pgapp", package("1.0.0", salt="b"), version="1.0.0")
        assert conflict.status_code == 409
        assert api.upload("pgapp", package("1.1.0"), version="1.1.0").status_code == 201
        listed = api.list("pgapp").json()
        assert listed["count"] == 2 and [r["version"] for r in listed["results"]] == ["1.1.0", "1.0.0"]
        assert api.list("pgapp", order_by="version").json()["results"][0]["version"] == "1.0.0"
        download = api.download("pgapp", record["id"])
        assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == record[
            "sha256_signature"]
        assert api.delete("pgapp", record["id"]).status_code in (200, 204)
        assert api.list("pgapp").json()["count"] == 1
        restored = api.restore("pgapp", record["id"])
        assert restored.status_code == 200 and restored.json()["is_deleted"] is False
        events = server.cli("events", "--app", "pgapp", "--json").stdout
        assert '"restored"' in events and '"stored"' in events
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        # the operator's commands work on PostgreSQL beside the running server
        assert "fsck: 2 blob(s) checked" in server.cli("fsck").stdout
        assert server.cli("gc", "--dry-run").returncode == 0
        api.close()
    finally:
        server.stop()
    assert PASSWORD not in server.log.read_text()


def test_copy_records_moves_a_sqlite_registry_to_postgres(tmp_path: Path, pg_url: str) -> None:
    source_root = tmp_path / "sqlite"
    server = start_registry(source_root, base_config(source_root))
    try:
        token = server.token("alice")
        api = Api(server.url, token)
        ids = [api.upload("mover", package(f"1.{n}.0"), version=f"1.{n}.0").json()["id"] for n in range(3)]
        assert api.delete("mover", ids[0]).status_code in (200, 204)
        api.close()
    finally:
        server.stop()
    target = with_password(pg_url)
    copied = run(server.config, "copy-records", "--to", target)
    assert copied.returncode == 0, copied.stderr
    assert "copied 3 record(s), 3 package detail(s), 1 credential(s), 4 event(s)" in copied.stdout
    refused = run(server.config, "copy-records", "--to", target)
    assert refused.returncode == 1 and "TARGET_NOT_EMPTY" in refused.stderr
    resumed = run(server.config, "copy-records", "--to", target, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "copied 0 record(s), 0 package detail(s), 0 credential(s), 0 event(s)" in resumed.stdout
    assert "11 already there" in resumed.stdout
    for result in (copied, refused, resumed):
        assert PASSWORD not in result.stdout + result.stderr

    # the same blobs, now served from PostgreSQL: the old token, ids and deletions hold
    moved = start_registry(tmp_path / "pg", pg_config(source_root, pg_url))
    try:
        api = Api(moved.url, token)
        assert api.list("mover").json()["count"] == 2
        assert api.list("mover", include_deleted="true").json()["count"] == 3
        assert api.download("mover", ids[1]).status_code == 200
        moved_store = PostgresStore(pg_url, pool_size=1)
        try:
            details = moved_store.package_details(ids[1])
            assert details is not None and "app_desc.yaml" in details.member_paths
            assert details.app_desc is not None and "1.1.0" in details.app_desc
            assert_counts_exact(moved_store)  # the copy's inserts kept the module counters
        finally:
            moved_store.close()
        assert api.restore("mover", ids[0]).status_code == 200
        newer = api.upload("mover", package("2.0.0"), version="2.0.0")
        assert newer.status_code == 201 and newer.json()["id"] > max(ids)
        assert api.list("mover").json()["count"] == 4
        apps = api.http.get("/bkapps/applications/", params={"search_term": "mover"}).json()
        assert [(a["code"], a["modules"], a["packages"]) for a in apps["results"]] == [("mover", 1, 4)]
        api.close()
    finally:
        moved.stop()


def test_the_cluster_example_selects_postgres() -> None:
    from registry.bootstrap import load_settings
    from registry.cli_records import open_store

    repo = Path(__file__).resolve().parent.parent
    settings, pm = load_settings(repo / "config" / "registry.cluster.toml")
    store = open_store(settings, pm)
    assert type(store).__name__ == "PostgresStore"
    assert store.description == "postgresql db.internal:5432/registry"


def test_web_sessions_on_postgres_need_one_configured_secret(tmp_path: Path, pg_url: str) -> None:
    """No folder is shared by instances on a database server: the session key must be
    configured, and then a session signed by one instance is valid on another."""
    unset = pg_config(tmp_path / "unset", pg_url)
    del unset["ui"]
    config = write_config(tmp_path / "unset", unset)
    for command in ("check-config", "serve"):
        refused = run(config, command, *(["--port", "0"] if command == "serve" else []))
        assert refused.returncode == 1 and "ui.session_secret" in refused.stderr, refused.stderr
    assert not (tmp_path / "unset" / "ui-session-secret").exists()
    disabled = {**unset, "ui": {"enabled": False}}
    assert run(write_config(tmp_path / "off", disabled), "check-config").returncode == 0

    first = start_registry(tmp_path / "a", pg_config(tmp_path / "a", pg_url))
    second = start_registry(tmp_path / "b", pg_config(tmp_path / "b", pg_url))
    try:
        token = first.token("erin")
        with httpx.Client(base_url=first.url) as browser:
            login = browser.get("/ui/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
            assert csrf is not None
            signed_in = browser.post("/ui/login", data={"csrf_token": csrf.group(1), "token": token})
            assert signed_in.status_code == 303
            cookie = browser.cookies["registry_session"]
        with httpx.Client(base_url=second.url, cookies={"registry_session": cookie}) as other:
            home = other.get("/ui/")
            assert home.status_code == 200 and "erin" in home.text
    finally:
        first.stop()
        second.stop()


def test_jobs_and_resumable_uploads_run_on_postgres_and_move_with_copy_records(tmp_path: Path, pg_url: str,
                                                                              code: str) -> None:
    """A finished job and a half-sent tus upload made on SQLite move with copy-records; on
    PostgreSQL the job still answers, the upload continues where it was, and new jobs run."""
    from tests.hostile_servers import HostileServer, serve
    from tests.test_jobs import finished, get_job, submit
    from tests.test_tus import create, offset_of, patch

    origin = HostileServer()
    source_root = tmp_path / "sqlite"
    server = start_registry(source_root, base_config(source_root))
    try:
        token = server.token("alice")
        api = Api(server.url, token)
        job = submit(api, code, origin.route("/one.tar.gz", serve(package("1.0.0", salt=code))))
        assert job.status_code == 202, job.text
        done = finished(api, code, job.json()["id"])
        assert done["state"] == "succeeded" and done["package"]["status"] == 201
        body = package("2.0.0", salt=code)
        half = len(body) // 2
        upload_url = create(api, code, len(body), version="2.0.0")
        assert patch(api, upload_url, 0, body[:half]).status_code == 204
        api.close()
    finally:
        server.stop()

    copied = run(server.config, "copy-records", "--to", with_password(pg_url))
    assert copied.returncode == 0, copied.stderr
    assert "1 job(s), 1 upload(s)" in copied.stdout

    moved = start_registry(tmp_path / "pg", pg_config(source_root, pg_url))
    try:
        api = Api(moved.url, token)
        upload_url = upload_url.replace(server.url, moved.url)  # Location is absolute
        assert get_job(api, code, done["id"]) == done
        assert offset_of(api, upload_url) == half
        last = patch(api, upload_url, half, body[half:])
        assert last.status_code == 204, last.text
        assert api.get(code, int(last.headers["registry-package-id"])).json()["version"] == "2.0.0"
        again = submit(api, code, origin.route("/three.tar.gz", serve(package("3.0.0", salt=code))))
        assert again.status_code == 202, again.text
        third = finished(api, code, again.json()["id"])
        assert third["state"] == "succeeded" and third["package"]["version"] == "3.0.0"
        with psycopg.connect(pg_url) as conn:
            states = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        assert states == [("succeeded", 2)]
        api.close()
    finally:
        moved.stop()
        origin.close()
