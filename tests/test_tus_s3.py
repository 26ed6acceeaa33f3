"""Resumable uploads on the S3 backend (moto's server on loopback): the bytes
are an S3 multipart upload, chunks below S3's 5 MiB part minimum are buffered
as a tail object, and a partial upload survives a kill -9 of the server."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_plugins.s3_resumable import MIN_PART
from tests.helpers import Api, app_desc, make_tar, start_registry
from tests.test_s3 import s3_config
from tests.test_storage_conformance import DUMMY_AWS_ENV, MotoServer
from tests.test_tus import TUS, create, offset_of, patch

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> str:
    return moto.create_bucket("tus")


def resumable_objects(moto: MotoServer, bucket: str) -> tuple[list[str], list[str]]:
    """(keys under the resumable folder, multipart uploads in progress)."""
    client = moto.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="packages/.resumable/").get("Contents", [])]
    uploads = [u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return keys, uploads


def test_chunks_smaller_than_a_part_survive_a_kill(tmp_path: Path, moto: MotoServer, bucket: str,
                                                   code: str) -> None:
    body = make_tar({"app_desc.yaml": app_desc("7.0.0"), "payload.bin": os.urandom(12 * MiB)})
    process = start_registry(tmp_path, s3_config(tmp_path, moto, bucket), env=DUMMY_AWS_ENV)
    try:
        api = Api(process.url, process.token("s3tus"))
        url = create(api, code, len(body))
        offset = 0
        for size in (1 * MiB, 3 * MiB, 2 * MiB + 5):  # below, below, then past one part
            assert patch(api, url, offset, body[offset:offset + size]).status_code == 204
            offset += size
        assert offset > MIN_PART
        process.kill()
        # Nothing local is needed to go on, as on another instance: the bytes are in the bucket.
        shutil.rmtree(tmp_path / "staging", ignore_errors=True)
        process.start()
        api.close()
        api = Api(process.url, process.token("s3tus"))
        path = Api.path(code, suffix="uploads/" + url.rsplit("/", 1)[1])
        assert offset_of(api, path) == offset
        last = patch(api, path, offset, body[offset:])
        assert last.status_code == 204, last.text
        record = api.get(code, int(last.headers["registry-package-id"])).json()
        assert record["sha256_signature"] == hashlib.sha256(body).hexdigest()
        assert api.download(code, record["id"]).content == body
        keys, uploads = resumable_objects(moto, bucket)
        assert keys == [] and uploads == []
        api.close()
    finally:
        process.stop()


def test_termination_and_bad_bytes_leave_nothing_in_the_bucket(tmp_path: Path, moto: MotoServer, bucket: str,
                                                               code: str) -> None:
    process = start_registry(tmp_path, s3_config(tmp_path, moto, bucket), env=DUMMY_AWS_ENV)
    try:
        api = Api(process.url, process.token("s3tus"))
        url = create(api, code, 6 * MiB + 10)
        assert patch(api, url, 0, os.urandom(6 * MiB)).status_code == 204
        assert resumable_objects(moto, bucket) != ([], [])
        assert api.http.delete(url, headers=TUS).status_code == 204
        assert resumable_objects(moto, bucket) == ([], [])
        junk = b"not an archive" * 1000
        url = create(api, code, len(junk))
        response = patch(api, url, 0, junk)
        assert response.status_code == 400 and response.json()["code"] == "INVALID_PACKAGE"
        assert resumable_objects(moto, bucket) == ([], [])
        assert api.list(code, include_deleted="true").json()["count"] == 0
        api.close()
    finally:
        process.stop()
