"""``registry push-link --background`` and ``registry push --resumable`` against a live registry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from registry.client import RegistryClient
from registry.client_transfers import push_resumable
from tests.conftest import FileServer
from tests.helpers import RegistryProcess, package
from tests.test_cli_client import connection, run, write_package
from tests.test_jobs import big_package


class Interrupted(Exception):
    pass


def test_push_link_background_exits_with_the_jobs_result(registry: RegistryProcess, token: str, code: str,
                                                         file_server: FileServer) -> None:
    data = package(salt=code)
    url = file_server.add(f"{code}/bg/example.tar.gz", data)
    pushed = run("push-link", url, "--background", "--app", code, "--module", "default", "--version", "0.1.0",
                 *connection(registry, token))
    assert pushed.returncode == 0, pushed.stderr
    record = json.loads(pushed.stdout)
    assert record["version"] == "0.1.0" and record["sha256_signature"] == hashlib.sha256(data).hexdigest()
    assert "status" not in record
    missing = run("push-link", f"{file_server.url}/{code}/missing.tar.gz", "--background", "--app", code,
                  "--module", "default", "--version", "0.2.0", *connection(registry, token))
    assert missing.returncode == 1 and missing.stdout == ""
    assert "PACKAGE_DOWNLOAD_FAILED" in missing.stderr


def test_push_resumable(registry: RegistryProcess, token: str, code: str, tmp_path: Path) -> None:
    path = write_package(tmp_path, "demo.tar.gz", big_package(200_000, version="1.1.0"))
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    pushed = run("push", str(path), "--resumable", "--chunk-size", "64K", "--app", code, "--module", "default",
                 *connection(registry, token), env=env)
    assert pushed.returncode == 0, pushed.stderr
    record = json.loads(pushed.stdout)
    assert record["version"] == "1.1.0"
    assert record["sha256_signature"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing left to resume
    again = run("push", str(path), "--resumable", "--app", code, "--module", "default",
                *connection(registry, token), env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["id"] == record["id"]
    bad = run("push", str(path), "--resumable", "--chunk-size", "0", "--app", code, "--module", "default",
              *connection(registry, token), env=env)
    assert bad.returncode == 2


def test_push_resumable_resumes_an_interrupted_push(registry: RegistryProcess, token: str, code: str,
                                                    tmp_path: Path) -> None:
    path = write_package(tmp_path, "resume.tar.gz", big_package(300_000, version="2.2.0"))
    cache = tmp_path / "cache"
    calls: list[int] = []

    def stop_after_two_chunks(done: int, total: int | None) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise Interrupted

    with RegistryClient(registry.url, token) as client, pytest.raises(Interrupted):
        push_resumable(client, path, code, "default", chunk_size=64 * 1024, progress=stop_after_two_chunks,
                       folder=cache / "registry" / "uploads")
    states = list(cache.rglob("*.json"))
    assert len(states) == 1
    upload_url = json.loads(states[0].read_text())["url"]
    head = httpx.head(upload_url, headers={"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {token}"})
    assert head.headers["upload-offset"] == str(128 * 1024)

    pushed = run("push", str(path), "--resumable", "--chunk-size", "64K", "--app", code, "--module", "default",
                 *connection(registry, token), env={"XDG_CACHE_HOME": str(cache)})
    assert pushed.returncode == 0, pushed.stderr
    record = json.loads(pushed.stdout)
    outcome = httpx.get(upload_url, headers={"Authorization": f"Bearer {token}"}).json()
    assert outcome["state"] == "succeeded" and outcome["package"]["id"] == record["id"]
    assert not list(cache.rglob("*.json"))
