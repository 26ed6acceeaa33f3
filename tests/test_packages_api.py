"""Reading and managing packages: list, get, download, delete, restore, path rules."""

from __future__ import annotations

import hashlib
import http.client
import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.helpers import Api, RegistryProcess, package

RECORD_KEYS = {"id", "version", "package_name", "package_size", "sha256_signature",
               "is_deleted", "updated", "created", "operator"}


def storage_root(process: RegistryProcess) -> Path:
    return process.config.parent / "packages"


def set_times(process: RegistryProcess, package_id: int, created: str, updated: str | None = None) -> None:
    """Set a record's stored times (UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``) to test orderings
    without waiting for the clock."""
    conn = sqlite3.connect(process.config.parent / "registry.db", timeout=30)
    try:
        with conn:
            conn.execute("UPDATE packages SET created = ?, updated = ? WHERE id = ?",
                         (created, updated or created, package_id))
    finally:
        conn.close()


def upload(api: Api, code: str, version: str, salt: str = "", filename: str = "demo.tar.gz",
           module: str = "default", **kwargs: Any) -> dict[str, Any]:
    response = api.upload(code, package(salt=code + version + salt, **kwargs), module=module,
                          filename=filename, version=version)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.headers["bkapi-error-code"] == code


# -- list -------------------------------------------------------------------------------


def test_empty_list(api: Api, code: str) -> None:
    response = api.list(code)
    assert response.status_code == 200, response.text
    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_list_newest_first_with_id_tiebreak(api: Api, registry: RegistryProcess, code: str) -> None:
    records = [upload(api, code, f"1.{i}") for i in range(4)]
    ids = [r["id"] for r in records]
    # newest first by default
    body = api.list(code).json()
    assert body["count"] == 4
    assert [r["id"] for r in body["results"]] == ids[::-1]
    assert all(set(r) == RECORD_KEYS for r in body["results"])
    assert body["results"][0] == api.get(code, ids[3]).json()
    # created decides, not id
    set_times(registry, ids[0], "2030-01-01 00:00:00.000000")
    set_times(registry, ids[3], "2020-01-01 00:00:00.000000")
    # equal created: the higher id first
    set_times(registry, ids[1], "2025-01-01 00:00:00.000000")
    set_times(registry, ids[2], "2025-01-01 00:00:00.000000")
    assert [r["id"] for r in api.list(code).json()["results"]] == [ids[0], ids[2], ids[1], ids[3]]
    assert [r["id"] for r in api.list(code, order_by="-created").json()["results"]] == [ids[0], ids[2], ids[1], ids[3]]
    assert [r["id"] for r in api.list(code, order_by="created").json()["results"]] == [ids[3], ids[1], ids[2], ids[0]]
    assert api.get(code, ids[0]).json()["created"] == "2030-01-01 00:00:00"


def test_list_order_by_every_value(api: Api, registry: RegistryProcess, code: str) -> None:
    versions = ["1.0", "3.0", "2.0", "10.0", "0.9"]
    records = [upload(api, code, v, salt="x" * (7 * i), fmt="zip") for i, v in enumerate(versions)]
    sizes = {r["id"]: int(r["package_size"]) for r in records}
    assert len(set(sizes.values())) > 1
    updated = ["2024-01-05", "2024-01-01", "2024-01-04", "2024-01-02", "2024-01-03"]
    for record, day in zip(records, updated, strict=True):
        set_times(registry, record["id"], "2023-06-01 00:00:00.000000", f"{day} 00:00:00.000000")

    def order(order_by: str) -> list[int]:
        response = api.list(code, order_by=order_by)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["results"]]

    by_id = {r["id"]: r for r in records}
    ids = [r["id"] for r in records]
    assert order("version") == sorted(ids, key=lambda i: (by_id[i]["version"], i))
    assert order("-version") == sorted(ids, key=lambda i: (by_id[i]["version"], i), reverse=True)
    assert order("package_size") == sorted(ids, key=lambda i: (sizes[i], i))
    assert order("-package_size") == sorted(ids, key=lambda i: (sizes[i], i), reverse=True)
    by_updated = [ids[1], ids[3], ids[4], ids[2], ids[0]]
    assert order("updated") == by_updated
    assert order("-updated") == by_updated[::-1]
    # all created equal: id decides
    assert order("created") == sorted(ids)
    assert order("-created") == sorted(ids, reverse=True)
    assert order("") == sorted(ids, reverse=True)


@pytest.mark.parametrize("value", ["id", "-id", "name", "created;drop table packages", "+created"])
def test_invalid_order_by(api: Api, code: str, value: str) -> None:
    response = api.list(code, order_by=value)
    assert_error(response, 400, "VALIDATION_ERROR")
    assert "order_by" in response.json()["fields_detail"]


def test_pagination_links(api: Api, registry: RegistryProcess, code: str) -> None:
    ids = [upload(api, code, f"2.{i}")["id"] for i in range(5)]
    newest_first = ids[::-1]
    first = api.list(code, limit=2).json()
    assert first["count"] == 5
    assert [r["id"] for r in first["results"]] == newest_first[:2]
    assert first["previous"] is None
    assert first["next"].startswith(registry.url + Api.path(code))
    query = parse_qs(urlsplit(first["next"]).query)
    assert query["limit"] == ["2"] and "offset" not in query and query["cursor"]

    second = httpx.get(first["next"], headers=api.http.headers).json()
    assert second["count"] == 5
    assert [r["id"] for r in second["results"]] == newest_first[2:4]
    assert second["previous"].startswith(registry.url + "/")
    assert httpx.get(second["previous"], headers=api.http.headers).json() == first

    third = httpx.get(second["next"], headers=api.http.headers).json()
    assert [r["id"] for r in third["results"]] == newest_first[4:]
    assert third["next"] is None
    back = httpx.get(third["previous"], headers=api.http.headers).json()
    assert back["results"] == second["results"]
    # offset keeps working, and its links lead on by cursor
    middle = api.list(code, limit=2, offset=1).json()
    assert [r["id"] for r in middle["results"]] == newest_first[1:3]
    assert [r["id"] for r in httpx.get(middle["next"], headers=api.http.headers).json()["results"]] == \
        newest_first[3:5]
    assert [r["id"] for r in httpx.get(middle["previous"], headers=api.http.headers).json()["results"]] == \
        newest_first[:1]

    beyond = api.list(code, limit=2, offset=10).json()
    assert beyond["count"] == 5 and beyond["results"] == [] and beyond["next"] is None
    assert beyond["previous"] is not None
    # past the end, previous leads to the last (full) page
    last = httpx.get(beyond["previous"], headers=api.http.headers).json()
    assert [r["id"] for r in last["results"]] == newest_first[3:] and last["next"] is None


@pytest.mark.parametrize("order_by", ["-created", "created", "version", "-version", "package_size",
                                      "-package_size", "updated", "-updated"])
def test_cursor_pages_return_every_record_once_while_records_come_and_go(
        api: Api, code: str, order_by: str) -> None:
    present = {upload(api, code, f"1.{i:02d}", salt="x" * (i % 3))["id"] for i in range(9)}
    seen: list[int] = []
    body = api.list(code, limit=2, order_by=order_by).json()
    step = 0
    while True:
        seen += [r["id"] for r in body["results"]]
        if body["next"] is None:
            break
        # between pages: a new version appears and a record not yet seen is deleted
        step += 1
        if step <= 3:
            upload(api, code, f"5.{step}", salt="x" * (step % 3))
        unseen = sorted(present - set(seen))
        if unseen:
            assert api.delete(code, unseen[0]).status_code == 204
            present.discard(unseen[0])
        body = httpx.get(body["next"], headers=api.http.headers).json()
    assert len(seen) == len(set(seen))
    assert present <= set(seen)


@pytest.mark.parametrize("cursor", ["x", "%%%", "e30", "W10", "WyItY3JlYXRlZCIsMCwiYSIsMV0", "a" * 600,
                                    "WyJ2ZXJzaW9uIiwwLCIxIiwxXQ"])
def test_a_bad_cursor_is_a_validation_error(api: Api, code: str, cursor: str) -> None:
    response = api.list(code, cursor=cursor)  # the last one belongs to order_by=version
    assert response.status_code == 400
    assert "cursor" in response.json()["fields_detail"]



def test_pagination_keeps_other_parameters(api: Api, code: str) -> None:
    for i in range(3):
        upload(api, code, f"5.{i}", filename="keep.tar.gz")
    upload(api, code, "9.9", filename="other.tar.gz")
    body = api.list(code, limit=1, search_term="keep", order_by="version").json()
    assert body["count"] == 3
    query = parse_qs(urlsplit(body["next"]).query)
    assert query["search_term"] == ["keep"]
    assert query["order_by"] == ["version"]
    nxt = httpx.get(body["next"], headers=api.http.headers).json()
    assert [r["version"] for r in nxt["results"]] == ["5.1"]


def test_default_and_maximum_limit(api: Api, registry: RegistryProcess, code: str) -> None:
    # 101 records via the API would be slow; clone one uploaded record in the database
    # (list never reads blobs).
    first = upload(api, code, "0")
    conn = sqlite3.connect(registry.config.parent / "registry.db", timeout=30)
    try:
        with conn:
            for i in range(1, 101):
                conn.execute(
                    "INSERT INTO packages (code, module, version, package_name, package_size, sha256,"
                    " blob_key, format, file_name, origin, source_url, is_deleted, revived, created,"
                    " updated, operator) SELECT code, module, ?, package_name, package_size, sha256, ?,"
                    " format, file_name, origin, source_url, 0, 0, created, updated, operator"
                    " FROM packages WHERE id = ?",
                    (str(i), f"{code}/default/clone-{i}", first["id"]),
                )
    finally:
        conn.close()
    default = api.list(code).json()
    assert default["count"] == 101
    assert len(default["results"]) == 100
    rest = httpx.get(default["next"], headers=api.http.headers).json()
    assert len(rest["results"]) == 1 and rest["next"] is None
    assert len(api.list(code, limit=1000).json()["results"]) == 101
    assert len(api.list(code, limit=1000, offset=100).json()["results"]) == 1


@pytest.mark.parametrize("params", [{"limit": "1001"}, {"limit": "0"}, {"limit": "-1"}, {"limit": "ten"},
                                    {"offset": "-1"}, {"offset": "x"}, {"include_deleted": "maybe"},
                                    {"search_term": "x" * 129}])
def test_invalid_list_parameters(api: Api, code: str, params: dict[str, str]) -> None:
    response = api.list(code, **params)
    assert_error(response, 400, "VALIDATION_ERROR")
    assert set(response.json()["fields_detail"]) == set(params)


def test_search_term(api: Api, code: str) -> None:
    alpha = upload(api, code, "1.0.0", filename="alpha.tar.gz")
    beta = upload(api, code, "2.0.0", filename="beta.tar.gz")
    gamma = upload(api, code, "2.1.0-rc_1", filename="gamma.tar.gz")

    def found(term: str) -> set[int]:
        response = api.list(code, search_term=term)
        assert response.status_code == 200, response.text
        assert response.json()["count"] == len(response.json()["results"])
        return {r["id"] for r in response.json()["results"]}

    assert found("beta") == {beta["id"]}            # package_name
    assert found("alpha:1.0") == {alpha["id"]}      # package_name with version
    assert found("2.") == {beta["id"], gamma["id"]}  # version
    assert found("rc_1") == {gamma["id"]}
    assert found("_") == {gamma["id"]}               # not a LIKE wildcard
    assert found("%") == set()
    assert found("nothing") == set()
    assert found("") == {alpha["id"], beta["id"], gamma["id"]}


def test_list_is_per_module(api: Api, code: str) -> None:
    default = upload(api, code, "1")
    worker = upload(api, code, "1", module="worker")
    assert [r["id"] for r in api.list(code).json()["results"]] == [default["id"]]
    assert [r["id"] for r in api.list(code, module="worker").json()["results"]] == [worker["id"]]
    assert api.list(code + "-other").json()["count"] == 0


# -- get ---------------------------------------------------------------------------------


def test_get_one_record(api: Api, code: str) -> None:
    record = upload(api, code, "1.0")
    response = api.get(code, record["id"])
    assert response.status_code == 200, response.text
    assert response.json() == record
    assert response.headers["content-type"].startswith("application/json")


def test_get_unknown_id(api: Api, code: str) -> None:
    upload(api, code, "1.0")
    assert_error(api.get(code, 987654321), 404, "PACKAGE_NOT_FOUND")


def test_get_another_modules_or_apps_id(api: Api, code: str) -> None:
    record = upload(api, code, "1.0")
    assert_error(api.get(code, record["id"], module="other"), 404, "PACKAGE_NOT_FOUND")
    assert_error(api.get(code + "-b", record["id"]), 404, "PACKAGE_NOT_FOUND")
    assert_error(api.download(code, record["id"], module="other"), 404, "PACKAGE_NOT_FOUND")
    assert_error(api.delete(code + "-b", record["id"]), 404, "PACKAGE_NOT_FOUND")
    assert_error(api.restore(code, record["id"], module="other"), 404, "PACKAGE_NOT_FOUND")
    assert api.get(code, record["id"]).json() == record


@pytest.mark.parametrize("bad_id", ["abc", "-1", "1.5", "99999999999999999999999"])
def test_malformed_id(api: Api, code: str, bad_id: str) -> None:
    response = api.http.get(api.path(code, suffix=f"{bad_id}/"))
    assert_error(response, 400, "VALIDATION_ERROR")


# -- download ------------------------------------------------------------------------------


@pytest.fixture
def stored(api: Api, code: str) -> tuple[dict[str, Any], bytes]:
    data = package(salt=code * 50)
    response = api.upload(code, data, filename="demo-1.2.0.tar.gz", version="1.2.0")
    assert response.status_code == 201, response.text
    return response.json(), data


def test_download(api: Api, code: str, stored: tuple[dict[str, Any], bytes]) -> None:
    record, data = stored
    response = api.download(code, record["id"])
    assert response.status_code == 200
    assert response.content == data
    sha = hashlib.sha256(data).hexdigest()
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"].split(";")[0] == "application/gzip"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert 'filename="demo-1.2.0.tar.gz"' in disposition
    assert response.headers["etag"] == f'"{sha}"'
    assert response.headers["x-checksum-sha256"] == sha


def test_download_zip_content_type(api: Api, code: str) -> None:
    data = package(salt=code, fmt="zip")
    record = api.upload(code, data, filename="site.zip", version="1").json()
    response = api.download(code, record["id"])
    assert response.content == data
    assert response.headers["content-type"].split(";")[0] == "application/zip"
    assert 'filename="site.zip"' in response.headers["content-disposition"]


def test_download_file_name_without_extension_gets_one(api: Api, code: str) -> None:
    data = package(salt=code)
    record = api.upload(code, data, filename="blob", version="1").json()
    disposition = api.download(code, record["id"]).headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert '.tar.gz"' in disposition


@pytest.mark.parametrize("sent", ["ci/build/out.tar.gz", "C:\\build\\out.tar.gz"])
def test_download_file_name_drops_client_folders(api: Api, code: str, sent: str) -> None:
    record = api.upload(code, package(salt=code), filename=sent, version="1").json()
    assert record["package_name"] == "out:1"
    disposition = api.download(code, record["id"]).headers["content-disposition"]
    assert 'filename="out.tar.gz"' in disposition
    assert "build" not in disposition


def test_download_non_ascii_file_name(api: Api, code: str) -> None:
    record = api.upload(code, package(salt=code), filename="源码包.tar.gz", version="1").json()
    assert record["package_name"] == "源码包:1"
    disposition = api.download(code, record["id"]).headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''%E6%BA%90%E7%A0%81%E5%8C%85.tar.gz" in disposition


def test_head_download(api: Api, code: str, stored: tuple[dict[str, Any], bytes]) -> None:
    record, data = stored
    response = api.http.head(api.path(code, suffix=f"{record['id']}/download/"))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["etag"] == f'"{record["sha256_signature"]}"'


def test_head_download_does_not_stream_the_blob(api: Api, registry: RegistryProcess, code: str,
                                                stored: tuple[dict[str, Any], bytes]) -> None:
    """A HEAD answers from the record: the access log shows no body bytes
    sent (streaming the blob to throw it away used to count them all)."""
    import time

    record, _ = stored
    request_id = f"head-{code}"
    response = api.http.head(api.path(code, suffix=f"{record['id']}/download/"), headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    deadline = time.monotonic() + 20
    while True:  # the line is written once the server has finished the request
        lines = [json.loads(line) for line in registry.log.read_text().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line["request_id"] == request_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert [line["bytes_out"] for line in mine] == [0]


def test_head_download_of_a_missing_blob(api: Api, registry: RegistryProcess, code: str) -> None:
    record = upload(api, code, "1.0.0")
    for blob in storage_root(registry).joinpath(code).rglob("*"):
        if blob.is_file():
            blob.unlink()
    response = api.http.head(api.path(code, suffix=f"{record['id']}/download/"))
    assert response.status_code == 503
    assert response.headers["bkapi-error-code"] == "OBJECT_STORE_EXCEPTION"


def test_if_range_mismatch_sends_everything(api: Api, code: str, stored: tuple[dict[str, Any], bytes]) -> None:
    record, data = stored
    response = api.download(code, record["id"], Range="bytes=0-1", **{"If-Range": '"stale"'})
    assert response.status_code == 200
    assert response.content == data
    matching = api.download(code, record["id"], Range="bytes=0-1",
                            **{"If-Range": f'"{record["sha256_signature"]}"'})
    assert matching.status_code == 206
    assert matching.content == data[:2]


@pytest.mark.parametrize(("header", "piece"), [
    ("bytes=0-9", slice(0, 10)),
    ("bytes=10-", slice(10, None)),
    ("bytes=-10", slice(-10, None)),
    ("bytes=5-5", slice(5, 6)),
])
def test_download_range(api: Api, code: str, stored: tuple[dict[str, Any], bytes], header: str,
                        piece: slice) -> None:
    record, data = stored
    response = api.download(code, record["id"], Range=header)
    assert response.status_code == 206, response.text
    expected = data[piece]
    assert response.content == expected
    assert response.headers["content-length"] == str(len(expected))
    start = piece.start if piece.start >= 0 else len(data) + piece.start
    assert response.headers["content-range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
    assert response.headers["etag"] == f'"{record["sha256_signature"]}"'


def test_download_range_past_the_end_is_clipped(api: Api, code: str, stored: tuple[dict[str, Any], bytes]) -> None:
    record, data = stored
    response = api.download(code, record["id"], Range=f"bytes=1-{len(data) + 1000}")
    assert response.status_code == 206
    assert response.content == data[1:]
    assert response.headers["content-range"] == f"bytes 1-{len(data) - 1}/{len(data)}"


@pytest.mark.parametrize("spec", ["bytes={size}-", "bytes={size}-{end}", "bytes=-0"])
def test_download_unsatisfiable_range(api: Api, code: str, stored: tuple[dict[str, Any], bytes], spec: str) -> None:
    record, data = stored
    header = spec.format(size=len(data), end=len(data) + 10)
    response = api.download(code, record["id"], Range=header)
    assert_error(response, 416, "RANGE_NOT_SATISFIABLE")
    assert response.headers["content-range"] == f"bytes */{len(data)}"


def test_download_if_none_match(api: Api, code: str, stored: tuple[dict[str, Any], bytes]) -> None:
    record, data = stored
    etag = f'"{record["sha256_signature"]}"'
    for header in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        response = api.download(code, record["id"], **{"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
    other = api.download(code, record["id"], **{"If-None-Match": '"0000"'})
    assert other.status_code == 200
    assert other.content == data


def test_download_soft_deleted(api: Api, code: str, stored: tuple[dict[str, Any], bytes]) -> None:
    record, _ = stored
    assert api.delete(code, record["id"]).status_code == 204
    assert_error(api.download(code, record["id"]), 404, "PACKAGE_NOT_FOUND")
    assert_error(api.download(code, record["id"], Range="bytes=0-1"), 404, "PACKAGE_NOT_FOUND")


def test_download_unknown(api: Api, code: str) -> None:
    assert_error(api.download(code, 123456789), 404, "PACKAGE_NOT_FOUND")


# -- delete and restore ---------------------------------------------------------------------


def test_delete_and_restore(api: Api, code: str, registry: RegistryProcess) -> None:
    keep = upload(api, code, "1")
    gone = upload(api, code, "2")
    blobs_before = sorted((storage_root(registry) / code).rglob("*"))

    response = api.delete(code, gone["id"])
    assert response.status_code == 204
    assert response.content == b""
    deleted = api.get(code, gone["id"]).json()
    assert deleted["is_deleted"] is True
    assert deleted["id"] == gone["id"] and deleted["sha256_signature"] == gone["sha256_signature"]
    listing = api.list(code).json()
    assert listing["count"] == 1
    assert [r["id"] for r in listing["results"]] == [keep["id"]]
    assert api.list(code, search_term="2").json()["count"] == 0
    with_deleted = api.list(code, include_deleted="true").json()
    assert with_deleted["count"] == 2
    assert {r["id"]: r["is_deleted"] for r in with_deleted["results"]} == {keep["id"]: False, gone["id"]: True}
    assert api.list(code, include_deleted="false").json()["count"] == 1
    # soft: the bytes stay until restored or replaced
    assert sorted((storage_root(registry) / code).rglob("*")) == blobs_before
    # deleting twice changes nothing
    assert api.delete(code, gone["id"]).status_code == 204

    restored = api.restore(code, gone["id"])
    assert restored.status_code == 200, restored.text
    body = restored.json()
    assert set(body) == RECORD_KEYS
    assert body["id"] == gone["id"]
    assert body["is_deleted"] is False
    assert body["sha256_signature"] == gone["sha256_signature"]
    assert body["created"] == gone["created"]
    assert api.list(code).json()["count"] == 2
    assert api.download(code, gone["id"]).status_code == 200


def test_restore_live_record_is_harmless(api: Api, code: str) -> None:
    record = upload(api, code, "1")
    response = api.restore(code, record["id"])
    assert response.status_code == 200, response.text
    assert response.json() == record


def test_delete_unknown(api: Api, code: str) -> None:
    assert_error(api.delete(code, 55555555), 404, "PACKAGE_NOT_FOUND")
    assert_error(api.restore(code, 55555555), 404, "PACKAGE_NOT_FOUND")


# -- health -----------------------------------------------------------------------------------


def test_healthz_and_readyz_need_no_credential(registry: RegistryProcess) -> None:
    health = httpx.get(f"{registry.url}/healthz")
    assert health.status_code == 200
    assert health.headers["content-type"].startswith("application/json")
    assert httpx.get(f"{registry.url}/readyz").status_code == 200


# -- path validation ---------------------------------------------------------------------------


def raw_request(registry: RegistryProcess, method: str, path: str, token: str) -> tuple[int, dict[str, Any], str]:
    """Send ``path`` exactly as written (httpx would normalise ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=30)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}", "Content-Length": "0"})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("bkapi-error-code") or ""
    finally:
        conn.close()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


BAD_CODES = ["App", "UPPER", "..", ".", ".hidden", "-lead", "_lead", "a.b", "a%2fb", "a%2Fb", "%2e%2e",
             "a%20b", "x" * 33, "%C3%A9t%C3%A9"]
SUFFIXES = [("GET", ""), ("POST", ""), ("POST", "link/"), ("GET", "1/"), ("DELETE", "1/"),
            ("GET", "1/download/"), ("POST", "1/restore/")]


@pytest.mark.parametrize("bad", BAD_CODES)
def test_bad_code_or_module_is_validation_error(registry: RegistryProcess, token: str, bad: str) -> None:
    root = storage_root(registry)
    before = tree(root)
    for method, suffix in SUFFIXES:
        for path in (f"/bkapps/applications/{bad}/modules/default/source_package/{suffix}",
                     f"/api/bkpaas3/stag/bkapps/applications/good/modules/{bad}/source_package/{suffix}"):
            status, body, header = raw_request(registry, method, path, token)
            assert status == 400, (method, path, body)
            assert body["code"] == "VALIDATION_ERROR" == header, (method, path, body)
            assert set(body["fields_detail"]) <= {"code", "module_name"}
    assert tree(root) == before


def test_longest_valid_code_and_module(api: Api) -> None:
    code, module = "a" * 32, "m" + "-_9" * 10 + "z"
    assert len(module) == 32
    response = api.upload(code, package(salt="longest"), module=module, version="1")
    assert response.status_code == 201, response.text
    assert api.list(code, module=module).json()["count"] == 1


def test_encoded_slash_reaches_validation_over_httpx(api: Api) -> None:
    response = api.http.get("/bkapps/applications/a%2fb/modules/default/source_package/")
    assert_error(response, 400, "VALIDATION_ERROR")
    assert "code" in response.json()["fields_detail"]
