"""Background jobs across instances: every instance on one PostgreSQL database
seals and unseals job URLs with the same ``[jobs] key_file``, so a job made on
one is read and run on another; a configured key file that cannot be used
stops start-up, naming the key."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from tests.helpers import Api, RegistryProcess, base_config, blob_files, start_registry
from tests.hostile_servers import HostileServer, Request, response_head, serve
from tests.test_jobs import PIECE, big_package, finished, get_job, submit, wait_for
from tests.test_postgres import pg_config, run, write_config


def instance_config(root: Path, pg_url: str, packages: Path, key_file: Path | None) -> dict[str, dict[str, Any]]:
    """One instance on the shared database and storage root; its own database.path folder."""
    tables = pg_config(root, pg_url)
    tables["storage.filesystem"] = {"root": str(packages)}
    if key_file is not None:
        tables["jobs"] = {"key_file": str(key_file)}
    return tables


def test_a_job_made_on_one_instance_runs_on_another(tmp_path: Path, pg_url: str, code: str) -> None:
    key_file = tmp_path / "jobs.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o600)
    packages = tmp_path / "packages"
    body = big_package(8 * PIECE, version="5.0.0")
    first_sent = threading.Event()
    fetches: list[int] = []

    def handle(request: Request) -> None:
        fetches.append(1)
        if len(fetches) == 1:  # the first instance's fetch: two pieces, then it hangs
            request.send(response_head(200, {"Content-Length": str(len(body))}) + body[:2 * PIECE])
            first_sent.set()
            request.wait()
            return
        serve(body)(request)

    origin = HostileServer()
    instances: list[RegistryProcess] = []
    try:
        url = origin.route("/shared.tar.gz", handle)
        for name in ("a", "b"):
            instances.append(start_registry(tmp_path / name, instance_config(tmp_path / name, pg_url, packages,
                                                                             key_file)))
        a, b = instances
        token = a.token("cluster")
        api_a, api_b = Api(a.url, token), Api(b.url, token)
        try:
            job_id = submit(api_a, code, url).json()["id"]
            # read on the other instance while the first one fetches
            wait_for(lambda: get_job(api_b, code, job_id)["bytes_received"] >= 2 * PIECE, "the first fetch")
            assert first_sent.is_set()
            a.kill()  # the job's instance dies mid-fetch: the other one runs it again, unsealing its URL
            done = finished(api_b, code, job_id)
        finally:
            api_a.close()
            api_b.close()
        assert done["state"] == "succeeded", done
        assert done["package"]["version"] == "5.0.0"
        assert len(fetches) == 2
        assert len(list(blob_files(packages / code))) == 1
        assert "sealed with another key" not in (tmp_path / "b" / "serve.log").read_text()
    finally:
        for instance in instances:
            instance.stop()
        origin.close()


def test_a_configured_key_file_must_hold_a_key(tmp_path: Path) -> None:
    tables = base_config(tmp_path)
    tables["jobs"] = {"key_file": "missing.key"}  # relative to the config file's folder
    config = write_config(tmp_path, tables)
    for command in ("check-config", "serve"):
        refused = run(config, command, *(["--port", "0"] if command == "serve" else []))
        assert refused.returncode == 1 and "jobs.key_file" in refused.stderr, refused.stderr
        assert str(tmp_path / "missing.key") in refused.stderr
    assert not (tmp_path / "missing.key").exists(), "a configured key is never made by the registry"
    (tmp_path / "missing.key").write_bytes(b"too short")
    refused = run(config, "check-config")
    assert refused.returncode == 1 and "jobs.key_file" in refused.stderr, refused.stderr
    (tmp_path / "missing.key").write_bytes(os.urandom(32))
    accepted = run(config, "check-config")
    assert accepted.returncode == 0, accepted.stderr
