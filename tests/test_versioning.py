"""Versioning rules: create, conflict, overwrite, idempotent re-upload, revive, races."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import Api, RegistryProcess, blob_files, package, staged_files

THREADS = 8


def storage_root(process: RegistryProcess) -> Path:
    return process.config.parent / "packages"


def blobs(process: RegistryProcess, code: str) -> list[Path]:
    return sorted(blob_files(storage_root(process) / code))


def backdate(process: RegistryProcess, package_id: int, when: str = "2020-01-02 03:04:05.000000") -> None:
    """Move a record's created/updated into the past, so a later write shows in the
    second-resolution wire times without sleeping."""
    conn = sqlite3.connect(process.config.parent / "registry.db", timeout=30)
    try:
        with conn:
            conn.execute("UPDATE packages SET created = ?, updated = ? WHERE id = ?", (when, when, package_id))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def bob_token(registry: RegistryProcess) -> str:
    return registry.token("bob")


@pytest.fixture
def bob(registry: RegistryProcess, bob_token: str) -> Iterator[Api]:
    """A second credential with another operator name."""
    client = Api(registry.url, bob_token)
    try:
        yield client
    finally:
        client.close()


def test_new_version_is_201(api: Api, code: str) -> None:
    response = api.upload(code, package(salt=code), version="1.0")
    assert response.status_code == 201, response.text
    assert response.json()["is_deleted"] is False


def test_other_bytes_without_overwrite_is_409(api: Api, code: str, registry: RegistryProcess) -> None:
    old = package(salt=code + "old")
    first = api.upload(code, old, version="1.0")
    assert first.status_code == 201, first.text
    stored_blobs = blobs(registry, code)
    for allow in (None, False, "false", "0"):
        fields: dict[str, Any] = {"version": "1.0"}
        if allow is not None:
            fields["allow_overwrite"] = allow
        conflict = api.upload(code, package(salt=code + "new"), **fields)
        assert conflict.status_code == 409, conflict.text
        body = conflict.json()
        assert body["code"] == "PACKAGE_ALREADY_EXISTS"
        assert conflict.headers["bkapi-error-code"] == "PACKAGE_ALREADY_EXISTS"
        assert body["data"] == {"sha256_signature": hashlib.sha256(old).hexdigest()}
    assert api.get(code, first.json()["id"]).json() == first.json()
    assert api.download(code, first.json()["id"]).content == old
    assert blobs(registry, code) == stored_blobs
    assert api.list(code).json()["count"] == 1


def test_conflict_with_sha256_field_known_up_front(api: Api, code: str, registry: RegistryProcess) -> None:
    old = package(salt=code + "old")
    first = api.upload(code, old, version="1.0")
    new = package(salt=code + "new")
    conflict = api.upload(code, new, version="1.0", sha256=hashlib.sha256(new).hexdigest())
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["data"]["sha256_signature"] == hashlib.sha256(old).hexdigest()
    assert api.download(code, first.json()["id"]).content == old
    assert len(blobs(registry, code)) == 1


def test_overwrite_keeps_id_and_created(api: Api, bob: Api, code: str, registry: RegistryProcess) -> None:
    old = package(salt=code + "old")
    first = api.upload(code, old, version="1.0", filename="a.tar.gz")
    assert first.status_code == 201, first.text
    record = first.json()
    backdate(registry, record["id"])
    before = api.get(code, record["id"]).json()
    assert before["created"] == before["updated"] == "2020-01-02 03:04:05"
    [old_blob] = blobs(registry, code)

    new = package(salt=code + "new-and-longer")
    response = bob.upload(code, new, version="1.0", filename="a.tar.gz", allow_overwrite=True)
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["id"] == record["id"]
    assert after["created"] == "2020-01-02 03:04:05"
    assert after["updated"] != "2020-01-02 03:04:05"
    assert after["updated"] > after["created"]
    assert after["sha256_signature"] == hashlib.sha256(new).hexdigest()
    assert after["package_size"] == str(len(new)) != record["package_size"]
    assert after["operator"] == "bob"
    assert after["is_deleted"] is False
    assert api.get(code, record["id"]).json() == after
    assert api.download(code, record["id"]).content == new
    assert not old_blob.exists()
    assert [p.read_bytes() for p in blobs(registry, code)] == [new]
    assert api.list(code).json()["count"] == 1


@pytest.mark.parametrize("allow", [None, False, True])
def test_identical_reupload_is_idempotent(api: Api, bob: Api, code: str, registry: RegistryProcess,
                                          allow: bool | None) -> None:
    data = package(salt=code)
    first = api.upload(code, data, version="1.0")
    assert first.status_code == 201, first.text
    backdate(registry, first.json()["id"])
    before = api.get(code, first.json()["id"]).json()
    [blob] = blobs(registry, code)
    fields: dict[str, Any] = {"version": "1.0"}
    if allow is not None:
        fields["allow_overwrite"] = allow
    again = bob.upload(code, data, **fields)
    assert again.status_code == 200, again.text
    assert again.json() == before  # operator, updated and all unchanged
    with_digest = bob.upload(code, data, sha256=hashlib.sha256(data).hexdigest(), **fields)
    assert with_digest.status_code == 200, with_digest.text
    assert with_digest.json() == before
    assert blobs(registry, code) == [blob]
    assert blob.read_bytes() == data


def test_identical_bytes_under_another_file_name_change_nothing(api: Api, code: str) -> None:
    data = package(salt=code)
    first = api.upload(code, data, version="1.0", filename="first.tar.gz")
    assert first.status_code == 201, first.text
    again = api.upload(code, data, version="1.0", filename="second.tar.gz")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.json()["package_name"] == "first:1.0"


def test_revive_soft_deleted_version(api: Api, bob: Api, code: str, registry: RegistryProcess) -> None:
    old = package(salt=code + "old")
    first = api.upload(code, old, version="1.0")
    record = first.json()
    assert api.delete(code, record["id"]).status_code == 204
    assert api.get(code, record["id"]).json()["is_deleted"] is True

    new = package(salt=code + "new")
    revived = bob.upload(code, new, version="1.0")  # no allow_overwrite needed
    # Implementation choice (the contract does not say): a revive answers 201, like a new version.
    assert revived.status_code == 201, revived.text
    body = revived.json()
    assert body["id"] == record["id"]
    assert body["is_deleted"] is False
    assert body["sha256_signature"] == hashlib.sha256(new).hexdigest()
    assert body["operator"] == "bob"
    assert api.download(code, record["id"]).content == new
    assert [p.read_bytes() for p in blobs(registry, code)] == [new]
    assert [r["id"] for r in api.list(code).json()["results"]] == [record["id"]]

    restore = api.restore(code, record["id"])
    assert restore.status_code == 409, restore.text
    assert restore.json()["code"] == "PACKAGE_ALREADY_EXISTS"
    assert api.get(code, record["id"]).json() == body


def test_revive_with_identical_bytes(api: Api, code: str) -> None:
    data = package(salt=code)
    record = api.upload(code, data, version="1.0").json()
    assert api.delete(code, record["id"]).status_code == 204
    again = api.upload(code, data, version="1.0", sha256=hashlib.sha256(data).hexdigest())
    assert again.status_code in (200, 201), again.text
    assert again.json()["id"] == record["id"]
    assert again.json()["is_deleted"] is False
    assert api.download(code, record["id"]).content == data


def test_restore_without_reupload(api: Api, code: str) -> None:
    data = package(salt=code)
    record = api.upload(code, data, version="1.0").json()
    assert api.delete(code, record["id"]).status_code == 204
    restored = api.restore(code, record["id"])
    assert restored.status_code == 200, restored.text
    assert restored.json()["is_deleted"] is False
    assert restored.json()["sha256_signature"] == record["sha256_signature"]
    assert api.download(code, record["id"]).content == data


def test_versions_are_per_module_and_per_app(api: Api, code: str) -> None:
    a = api.upload(code, package(salt=code + "a"), version="1.0")
    b = api.upload(code, package(salt=code + "b"), version="1.0", module="worker")
    c = api.upload(code + "-x", package(salt=code + "c"), version="1.0")
    assert [r.status_code for r in (a, b, c)] == [201, 201, 201]
    assert len({a.json()["id"], b.json()["id"], c.json()["id"]}) == 3


# -- concurrency ----------------------------------------------------------------------


def race(url: str, token: str, jobs: list[Callable[[httpx.Client], httpx.Response]]) -> list[httpx.Response]:
    """Run every job in its own thread and client, released together by a barrier."""
    barrier = threading.Barrier(len(jobs))
    results: list[httpx.Response | BaseException | None] = [None] * len(jobs)

    def run(index: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            barrier.wait()
            try:
                results[index] = jobs[index](client)
            except BaseException as exc:  # noqa: BLE001 -- kept for the caller, which fails on it
                results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert isinstance(result, httpx.Response), f"a request failed: {result!r}"
    return results  # type: ignore[return-value]


def upload_job(code: str, data: bytes, **fields: str) -> Callable[[httpx.Client], httpx.Response]:
    def job(client: httpx.Client) -> httpx.Response:
        return client.post(Api.path(code), files={"package": ("race.tar.gz", data)}, data=fields)
    return job


def test_concurrent_different_bytes_one_wins(api: Api, registry: RegistryProcess, token: str, code: str) -> None:
    datas = [package(salt=f"{code}-{i}") for i in range(THREADS)]
    responses = race(registry.url, token, [upload_job(code, d, version="1.0") for d in datas])
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: THREADS - 1}, [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 201).json()
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "PACKAGE_ALREADY_EXISTS"
    downloaded = api.download(code, winner["id"]).content
    assert hashlib.sha256(downloaded).hexdigest() == winner["sha256_signature"]
    assert downloaded in datas
    assert [p.read_bytes() for p in blobs(registry, code)] == [downloaded]
    assert api.list(code).json()["count"] == 1


def test_concurrent_overwrites_stay_consistent(api: Api, registry: RegistryProcess, token: str, code: str) -> None:
    datas = [package(salt=f"{code}-{i}") for i in range(THREADS)]
    responses = race(registry.url, token,
                     [upload_job(code, d, version="1.0", allow_overwrite="true") for d in datas])
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 200: THREADS - 1}, [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    [package_id] = ids
    final = api.get(code, package_id).json()
    downloaded = api.download(code, package_id).content
    assert hashlib.sha256(downloaded).hexdigest() == final["sha256_signature"]
    assert final["package_size"] == str(len(downloaded))
    assert downloaded in datas
    assert [p.read_bytes() for p in blobs(registry, code)] == [downloaded]
    assert api.list(code).json()["count"] == 1


def test_concurrent_identical_uploads(api: Api, registry: RegistryProcess, token: str, code: str) -> None:
    data = package(salt=code)
    responses = race(registry.url, token, [upload_job(code, data, version="1.0") for _ in range(THREADS)])
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 200: THREADS - 1}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.json()["created"] for r in responses}) == 1
    assert [p.read_bytes() for p in blobs(registry, code)] == [data]
    assert staged_files(storage_root(registry) / ".staging") == []


def test_concurrent_uploads_of_different_versions_all_succeed(api: Api, registry: RegistryProcess, token: str,
                                                              code: str) -> None:
    jobs = [upload_job(code, package(salt=f"{code}-{i}"), version=f"1.{i}") for i in range(THREADS)]
    responses = race(registry.url, token, jobs)
    assert Counter(r.status_code for r in responses) == {201: THREADS}, [r.text for r in responses]
    assert api.list(code).json()["count"] == THREADS
    assert len(blobs(registry, code)) == THREADS
