"""Background link uploads (``P/jobs/``) against a live registry and real origins.

Origins are loopback servers whose pace the test controls, so progress,
cancellation and a crash happen at known points without timing assertions.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import helpers
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    blob_files,
    merge,
    package,
    start_registry,
    wait_for,
)
from tests.hostile_servers import (
    HostileServer,
    Request,
    declare_then_stall,
    response_head,
    serve,
)

KiB = 1024
PIECE = 64 * KiB


def big_package(size: int, version: str = "1.0.0") -> bytes:
    """A valid tar.gz of about ``size`` incompressible bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in {"app_desc.yaml": f"specVersion: 3\nappVersion: {version}\n".encode(),
                           "blob.bin": os.urandom(size)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gated(body: bytes, gate: threading.Semaphore) -> Callable[[Request], None]:
    """Serve ``body`` in :data:`PIECE`-sized pieces, each only once ``gate`` gives a permit."""
    def handle(request: Request) -> None:
        request.send(response_head(200, {"Content-Length": str(len(body)), "Connection": "close"}))
        for start in range(0, len(body), PIECE):
            while not gate.acquire(timeout=0.1):
                if request.stopping:
                    return
            request.send(body[start:start + PIECE])
    return handle


def jobs_path(api: Api, code: str, suffix: str = "") -> str:
    return api.path(code, "default", f"jobs/{suffix}")


def submit(api: Api, code: str, url: str, **fields: Any) -> httpx.Response:
    return api.http.post(jobs_path(api, code), json={"package_url": url, **fields})


def get_job(api: Api, code: str, job_id: str) -> dict[str, Any]:
    response = api.http.get(jobs_path(api, code, f"{job_id}/"))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def finished(api: Api, code: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = wait_for(
        lambda: (j := get_job(api, code, job_id))["state"] not in ("queued", "running") and j, f"job {job_id} to finish"
    )
    return job


def staged_files(process: RegistryProcess) -> list[Path]:
    return helpers.staged_files(process.config.parent / "packages" / ".staging")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, Api]]:
    root = tmp_path_factory.mktemp("jobs")
    process = start_registry(root, merge(base_config(root), {
        "origins.http": {"connect_timeout": 1, "read_timeout": 2, "total_timeout": 20},
    }))
    client = Api(process.url, process.token("jobs"))
    yield process, client
    client.close()
    process.stop()


@pytest.fixture
def origin() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


def test_a_job_answers_what_link_would(live: tuple[RegistryProcess, Api], origin: HostileServer, code: str) -> None:
    _, api = live
    body = package("1.2.3", salt=code)
    url = origin.route("/pkg.tar.gz", serve(body))
    response = submit(api, code, url)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["id"].startswith("j_")
    assert response.headers["location"].endswith(f"/source_package/jobs/{job['id']}/")
    assert job["state"] in ("queued", "running")
    assert job["package"] is None and job["error"] is None
    assert job["operator"] == "jobs" and job["package_url"] == url
    done = finished(api, code, job["id"])
    assert done["state"] == "succeeded", done
    assert done["package"]["status"] == 201
    assert done["bytes_received"] == done["bytes_total"] == len(body)
    record = api.get(code, done["package"]["id"]).json()
    assert {k: v for k, v in done["package"].items() if k != "status"} == record
    assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
    # The same body again: what P/link/ answers for an identical re-upload (200).
    again = finished(api, code, submit(api, code, url).json()["id"])
    assert again["package"]["status"] == 200 and again["package"]["id"] == record["id"]


def test_progress_grows_between_polls(live: tuple[RegistryProcess, Api], origin: HostileServer, code: str) -> None:
    _, api = live
    body = big_package(6 * PIECE)
    gate = threading.Semaphore(0)
    url = origin.route("/slow.tar.gz", gated(body, gate))
    job_id = submit(api, code, url).json()["id"]
    seen = []
    for step in range(1, 4):
        gate.release()

        def reached(count: int = step * PIECE) -> dict[str, Any] | None:
            job = get_job(api, code, job_id)
            return job if job["bytes_received"] >= count else None

        job = wait_for(reached, f"{step} pieces")
        assert job["state"] == "running" and job["bytes_total"] == len(body)
        seen.append(job["bytes_received"])
    assert seen == sorted(seen) and seen[0] < seen[-1]
    gate.release(len(body) // PIECE + 1)
    assert finished(api, code, job_id)["state"] == "succeeded"


def test_cancel_mid_fetch_leaves_nothing(live: tuple[RegistryProcess, Api], origin: HostileServer, code: str) -> None:
    process, api = live
    body = big_package(8 * PIECE)
    gate = threading.Semaphore(2)
    url = origin.route("/cancel.tar.gz", gated(body, gate))
    job_id = submit(api, code, url).json()["id"]
    wait_for(lambda: get_job(api, code, job_id)["bytes_received"] >= 2 * PIECE, "the fetch to start")
    assert api.http.delete(jobs_path(api, code, f"{job_id}/")).status_code == 204
    job = get_job(api, code, job_id)
    assert job["state"] == "cancelled"
    gate.release(100)  # had the fetch gone on, it would now complete
    wait_for(lambda: not staged_files(process), "the staging file to go")
    time.sleep(0.5)  # room for a fetch that failed to stop to store something
    assert get_job(api, code, job_id)["state"] == "cancelled"
    assert api.list(code, include_deleted="true").json()["count"] == 0
    assert list(blob_files(process.config.parent / "packages" / code)) == []
    # Cancelling again, or a finished job, changes nothing and is still 204.
    assert api.http.delete(jobs_path(api, code, f"{job_id}/")).status_code == 204


@pytest.mark.parametrize("make", [
    lambda: serve(b"gone", 404),
    lambda: declare_then_stall(1000),
    lambda: serve(b"this is not an archive at all"),
], ids=["origin-404", "origin-stalls", "not-an-archive"])
def test_failing_origins_fail_the_job_as_link_fails(
    live: tuple[RegistryProcess, Api], origin: HostileServer, code: str, make: Callable[[], Any],
) -> None:
    process, api = live
    url = origin.route("/bad.tar.gz", make())
    expected = api.link(code, url, version="1.0.0")
    assert expected.status_code >= 400
    headers = {"Accept-Language": "en"}
    job_id = api.http.post(jobs_path(api, code), json={"package_url": url, "version": "1.0.0"},
                           headers=headers).json()["id"]
    done = finished(api, code, job_id)
    assert done["state"] == "failed" and done["package"] is None
    assert done["error"] == expected.json()
    english = api.http.get(jobs_path(api, code, f"{job_id}/"), headers=headers).json()["error"]
    assert english["code"] == expected.json()["code"] and english["detail"] != expected.json()["detail"]
    assert api.list(code, include_deleted="true").json()["count"] == 0
    assert not staged_files(process)


def test_validation_errors_are_answered_at_once(live: tuple[RegistryProcess, Api], code: str) -> None:
    _, api = live
    missing = api.http.post(jobs_path(api, code), json={"version": "1.0.0"})
    assert missing.status_code == 400 and missing.json()["code"] == "VALIDATION_ERROR"
    assert "package_url" in missing.json()["fields_detail"]
    scheme = submit(api, code, "gopher://example.com/x.tar.gz")
    assert scheme.status_code == 400 and scheme.json()["code"] == "UNSUPPORTED_SOURCE_ORIGIN"
    bad_version = submit(api, code, "http://127.0.0.1:1/x.tar.gz", version="../x")
    assert bad_version.json()["code"] == "VALIDATION_ERROR"


def test_scopes_and_unknown_jobs(live: tuple[RegistryProcess, Api], origin: HostileServer, code: str) -> None:
    process, api = live
    url = origin.route("/scoped.tar.gz", serve(package("1.0.0", salt=code)))
    job_id = submit(api, code, url).json()["id"]
    finished(api, code, job_id)
    other = Api(process.url, process.token("bob", apps=("someone-else",)))
    try:
        for method in ("GET", "DELETE"):
            denied = other.http.request(method, jobs_path(other, code, f"{job_id}/"))
            assert denied.status_code == 403 and denied.json()["code"] == "PERMISSION_DENIED"
        assert submit(other, code, url).status_code == 403
    finally:
        other.close()
    reader = Api(process.url, process.token("carol", read_only=True))
    try:
        assert reader.http.get(jobs_path(reader, code, f"{job_id}/")).status_code == 200
        assert reader.http.delete(jobs_path(reader, code, f"{job_id}/")).status_code == 403
    finally:
        reader.close()
    for unknown in ("j_" + "0" * 32, "nonsense", "1"):
        missing = api.http.get(jobs_path(api, code, f"{unknown}/"))
        assert missing.status_code == 404 and missing.json()["code"] == "JOB_NOT_FOUND"
    elsewhere = api.http.get(api.path(code, "other", f"jobs/{job_id}/"))
    assert elsewhere.json()["code"] == "JOB_NOT_FOUND"
    assert api.http.delete(jobs_path(api, code, "j_" + "1" * 32 + "/")).status_code == 404


def test_secrets_are_redacted_and_never_stored(live: tuple[RegistryProcess, Api], origin: HostileServer,
                                               code: str) -> None:
    process, api = live
    origin.route("/signed.tar.gz", serve(package("1.0.0", salt=code)))
    secret = "s3cr3tSIGNATUREvalue"
    url = origin.url(f"/signed.tar.gz?X-Amz-Signature={secret}&keep=1")
    job = submit(api, code, url.replace("http://", f"http://user:{secret}pw@")).json()
    assert secret not in job["package_url"] and "REDACTED" in job["package_url"]
    assert finished(api, code, job["id"])["state"] == "succeeded"
    for path in process.config.parent.glob("registry.db*"):
        assert secret.encode() not in path.read_bytes()


def test_jobs_metrics(live: tuple[RegistryProcess, Api]) -> None:
    process, _ = live
    text = wait_for(lambda: (t := httpx.get(f"{process.url}/metrics").text) and 'registry_jobs{state="succeeded"}' in t
                    and t, "the job gauges")
    assert "registry_job_duration_seconds_bucket" in text
    assert "registry_job_fetched_bytes_total" in text
    assert "registry_resumable_uploads_in_progress" in text


def test_kill_mid_fetch_then_restart_finishes_once(tmp_path: Path, origin: HostileServer, code: str) -> None:
    body = big_package(8 * PIECE, version="3.0.0")
    first_sent = threading.Event()
    attempts: list[int] = []

    def handle(request: Request) -> None:
        attempts.append(1)
        if len(attempts) == 1:  # the first fetch: two pieces, then it hangs
            request.send(response_head(200, {"Content-Length": str(len(body))}) + body[:2 * PIECE])
            first_sent.set()
            request.wait()
            return
        serve(body)(request)

    url = origin.route("/crash.tar.gz", handle)
    process = start_registry(tmp_path, base_config(tmp_path))
    try:
        api = Api(process.url, process.token("crash"))
        job_id = submit(api, code, url).json()["id"]
        wait_for(lambda: get_job(api, code, job_id)["bytes_received"] >= 2 * PIECE, "the first fetch")
        process.kill()
        api.close()
        process.start()
        api = Api(process.url, process.token("crash"))
        done = finished(api, code, job_id)
        assert done["state"] == "succeeded", done
        assert len(attempts) == 2
        listed = api.list(code, include_deleted="true").json()
        assert listed["count"] == 1 and listed["results"][0]["version"] == "3.0.0"
        assert len(list(blob_files(tmp_path / "packages" / code))) == 1
        api.close()
    finally:
        process.stop()
