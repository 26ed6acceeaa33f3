"""End to end against S3: a live ``registry serve`` storing in, and fetching
``s3://`` links from, moto's S3 server on a loopback port.

The registry finds its credentials through boto3's chain (dummy values in its
environment); nothing about S3 is known to the core.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_plugins.origin_s3 import S3Object, S3Origin, parse_s3_url
from registry_plugins.storage_s3 import MULTIPART_CHUNKSIZE, S3Storage

from registry.bootstrap import build_registry, load_settings
from registry.errors import SourceOriginForbidden, ValidationError
from tests.helpers import (
    Api,
    RegistryProcess,
    app_desc,
    base_config,
    free_port,
    make_tar,
    merge,
    package,
    staged_files,
    start_registry,
)
from tests.test_storage_conformance import DUMMY_AWS_ENV, REGION, MotoServer

PREFIX = "packages/"


def s3_config(root: Path, moto: MotoServer, bucket: str) -> dict[str, dict[str, Any]]:
    """The registry config: blobs in ``bucket`` under ``PREFIX``, s3 links from the same endpoint."""
    tables = merge(base_config(root), {
        "storage": {"backend": "s3", "staging_dir": str(root / "staging")},
        "storage.s3": {"bucket": bucket, "prefix": PREFIX, "endpoint_url": moto.url, "region": REGION},
        "origins": {"enabled": ["http", "s3", "file"]},
        "origins.s3": {"endpoint_url": moto.url, "region": REGION},
    })
    del tables["storage.filesystem"]
    return tables


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> str:
    return moto.create_bucket("registry")


@pytest.fixture(scope="module")
def s3_registry(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer, bucket: str) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("s3-registry")
    process = start_registry(root, s3_config(root, moto, bucket), env=DUMMY_AWS_ENV)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def s3_token(s3_registry: RegistryProcess) -> str:
    return s3_registry.token("alice")


@pytest.fixture
def s3_api(s3_registry: RegistryProcess, s3_token: str) -> Iterator[Api]:
    client = Api(s3_registry.url, s3_token)
    yield client
    client.close()


def stored_objects(moto: MotoServer, bucket: str, code: str) -> dict[str, bytes]:
    """Every object the registry keeps for ``code``, by key."""
    client = moto.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}{code}/").get("Contents", [])
    return {obj["Key"]: client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read() for obj in listed}


def big_package(version: str) -> bytes:
    """A valid package larger than one multipart part (random bytes do not compress)."""
    return make_tar({"app_desc.yaml": app_desc(version), "payload.bin": os.urandom(MULTIPART_CHUNKSIZE + 1024**2)})


# -- storing in S3 -------------------------------------------------------------------

def test_upload_stores_one_object_and_downloads_with_range(s3_api: Api, code: str, moto: MotoServer,
                                                           bucket: str) -> None:
    data = package("1.0.0", salt=code)
    response = s3_api.upload(code, data)
    assert response.status_code == 201, response.text
    package_id = response.json()["id"]
    assert response.json()["sha256_signature"] == hashlib.sha256(data).hexdigest()
    assert list(stored_objects(moto, bucket, code).values()) == [data]

    full = s3_api.download(code, package_id)
    assert full.status_code == 200
    assert full.content == data
    part = s3_api.download(code, package_id, Range="bytes=10-99")
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 10-99/{len(data)}"
    assert part.content == data[10:100]


def test_a_package_larger_than_a_part_is_a_multipart_upload(s3_api: Api, code: str, moto: MotoServer,
                                                            bucket: str) -> None:
    data = big_package("2.0.0")
    response = s3_api.upload(code, data)
    assert response.status_code == 201, response.text
    [key] = stored_objects(moto, bucket, code)
    etag = moto.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    assert etag.endswith("-2"), f"not a two-part upload: ETag {etag}"

    package_id = response.json()["id"]
    downloaded = s3_api.download(code, package_id)
    assert hashlib.sha256(downloaded.content).hexdigest() == hashlib.sha256(data).hexdigest()
    start, end = MULTIPART_CHUNKSIZE - 10, MULTIPART_CHUNKSIZE + 9  # across the part boundary
    part = s3_api.download(code, package_id, Range=f"bytes={start}-{end}")
    assert part.status_code == 206
    assert part.content == data[start:end + 1]


def test_overwrite_leaves_only_the_new_object(s3_api: Api, code: str, moto: MotoServer, bucket: str) -> None:
    first = s3_api.upload(code, package(salt="one"), version="1.0")
    assert first.status_code == 201, first.text
    second_data = package(salt="two")
    second = s3_api.upload(code, second_data, version="1.0", allow_overwrite=True)
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert list(stored_objects(moto, bucket, code).values()) == [second_data]
    assert s3_api.download(code, second.json()["id"]).content == second_data


# -- fetching s3:// links --------------------------------------------------------------

def test_gc_and_fsck_work_on_s3(s3_api: Api, s3_registry: RegistryProcess, code: str, moto: MotoServer,
                                 bucket: str) -> None:
    """The operator tools go through the storage plugin, so they work on S3 too."""
    data = package("1.0.0", salt=code)
    assert s3_api.upload(code, data).status_code == 201
    orphan = f"{PREFIX}{code}/default/{'0' * 32}"
    moto.client().put_object(Bucket=bucket, Key=orphan, Body=b"left over by a crash")
    assert s3_registry.cli("fsck").returncode == 0
    dry = s3_registry.cli("gc", "--dry-run", "--grace-hours", "0")
    assert orphan.removeprefix(PREFIX) in dry.stdout
    assert orphan in stored_objects(moto, bucket, code)
    s3_registry.cli("gc", "--grace-hours", "0")
    assert list(stored_objects(moto, bucket, code).values()) == [data]


def test_upload_by_s3_link(s3_api: Api, code: str, moto: MotoServer) -> None:
    source = moto.create_bucket("sources")
    data = package(salt=code)
    moto.client().put_object(Bucket=source, Key=f"{code}/generic/example.tar.gz", Body=data)
    response = s3_api.link(code, f"s3://{source}/{code}/generic/example.tar.gz", version="0.0.5")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["package_name"] == "example:0.0.5"
    assert body["package_size"] == str(len(data))
    assert body["sha256_signature"] == hashlib.sha256(data).hexdigest()
    assert s3_api.download(code, body["id"]).content == data


def test_s3_link_to_a_missing_object_names_it(s3_api: Api, code: str, moto: MotoServer) -> None:
    source = moto.create_bucket("sources")
    response = s3_api.link(code, f"s3://{source}/releases/missing.tar.gz", version="1.0")
    assert response.status_code == 502, response.text
    assert response.headers["bkapi-error-code"] == "PACKAGE_DOWNLOAD_FAILED"
    assert response.json()["code"] == "PACKAGE_DOWNLOAD_FAILED"
    assert f"s3://{source}/releases/missing.tar.gz" in response.json()["detail"]
    assert s3_api.list(code).json()["count"] == 0


def test_s3_link_to_a_missing_bucket(s3_api: Api, code: str) -> None:
    response = s3_api.link(code, "s3://no-such-bucket-here/example.tar.gz", version="1.0")
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "PACKAGE_DOWNLOAD_FAILED"
    assert "no-such-bucket-here" in response.json()["detail"]


@pytest.mark.parametrize("url", ["s3://", "s3:///example.tar.gz", "s3://bucket-only", "s3://bucket-only/",
                                 "s3://user@bucket/key.tar.gz", "s3://bucket:9000/key.tar.gz"])
def test_malformed_s3_links_are_validation_errors(s3_api: Api, code: str, url: str) -> None:
    response = s3_api.link(code, url, version="1.0")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert "package_url" in response.json()["fields_detail"]


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://bucket/key.tar.gz", S3Object("bucket", "key.tar.gz")),
    ("S3://bucket/a/b/c.tar.gz", S3Object("bucket", "a/b/c.tar.gz")),
    ("s3://bucket/a%20b?x#y", S3Object("bucket", "a%20b?x#y")),  # taken literally, like the AWS CLI
])
def test_parse_s3_url(url: str, expected: S3Object) -> None:
    assert parse_s3_url(url) == expected


def test_parse_s3_url_refuses_a_missing_key() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_s3_url("s3://bucket")
    assert list(caught.value.fields) == ["package_url"]


@pytest.mark.anyio
async def test_allowed_buckets_forbid_other_buckets_before_any_request() -> None:
    origin = S3Origin(endpoint_url=f"http://127.0.0.1:{free_port()}", region=REGION, allowed_buckets=["releases"])
    with pytest.raises(SourceOriginForbidden, match="other-bucket"):
        async with origin.open("s3://other-bucket/app.tar.gz", max_size=1024):
            pass


# -- configuration ---------------------------------------------------------------------

def test_the_example_config_selects_s3() -> None:
    example = Path(__file__).parent.parent / "config" / "registry.s3.toml"
    settings, pm = load_settings(example)
    registry = build_registry(settings, pm)
    assert isinstance(registry.storage, S3Storage)
    assert registry.storage.bucket == "source-packages"
    assert [origin.name for origin in registry.origins if isinstance(origin, S3Origin)] == ["s3"]
    assert settings["origins.enabled"] == ["http", "s3", "file"]


# -- the endpoint going away -------------------------------------------------------------

def test_endpoint_down_is_503_and_records_nothing(tmp_path: Path, code: str) -> None:
    """A registry whose S3 stops after start-up: uploads fail cleanly, check-config says so."""
    secret = DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"]
    with contextlib.ExitStack() as cleanup:  # stops whatever was started, last first
        moto = MotoServer()
        cleanup.callback(moto.stop)
        bucket = moto.create_bucket("doomed")
        registry = start_registry(tmp_path, s3_config(tmp_path, moto, bucket), env=DUMMY_AWS_ENV)
        cleanup.callback(registry.stop)
        api = Api(registry.url, registry.token("alice"))
        cleanup.callback(api.close)
        assert api.upload(code, package(salt="kept"), version="1.0").status_code == 201
        assert registry.cli("check-config", check=False).returncode == 0

        moto.stop()

        response = api.upload(code, package(salt="lost"), version="2.0")
        assert response.status_code == 503, response.text
        assert response.headers["bkapi-error-code"] == "OBJECT_STORE_EXCEPTION"
        assert response.json()["code"] == "OBJECT_STORE_EXCEPTION"
        listing = api.list(code).json()
        assert listing["count"] == 1
        assert [r["version"] for r in listing["results"]] == ["1.0"]
        assert staged_files(tmp_path / "staging") == []

        link = api.link(code, f"s3://{bucket}/any.tar.gz", version="3.0")
        assert link.status_code in (502, 504), link.text
        assert link.json()["code"] in ("PACKAGE_DOWNLOAD_FAILED", "PACKAGE_DOWNLOAD_TIMEOUT")

        ready = api.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["code"] == "OBJECT_STORE_EXCEPTION"
        assert bucket not in ready.text  # the unauthenticated route names no bucket or endpoint
        check = registry.cli("check-config", check=False)
        assert check.returncode == 1
        assert "OBJECT_STORE_EXCEPTION" in check.stderr
        assert bucket in check.stderr
        assert secret not in check.stderr + response.text + link.text
    log = registry.log.read_text()
    assert "OBJECT_STORE_EXCEPTION" in log
    assert "not ready" in log and bucket in log  # ... but the operator's log does
    assert secret not in log
