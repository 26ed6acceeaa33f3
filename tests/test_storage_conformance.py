"""The storage conformance suite (registry.testing) run for filesystem and s3,
plus what only the s3 backend has: prefixes, multipart, aborts, dead endpoints.

S3 is moto's server on a free loopback port, so boto3 really speaks HTTP.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import EndpointConnectionError
from moto.server import ThreadedMotoServer
from registry_plugins.storage_filesystem import FilesystemStorage
from registry_plugins.storage_s3 import MULTIPART_CHUNKSIZE, S3Storage, make_s3_client

from registry.bootstrap import build_registry, load_settings
from registry.errors import ObjectStoreException
from registry.settings import SettingsError
from registry.storage import Storage, new_blob_key
from registry.testing import StorageConformance, put_bytes, read_blob, stage
from tests.helpers import free_port, to_toml

REGION = "us-east-1"
#: Credentials for moto, handed to boto3 through its usual chain (the
#: environment); the shared config files are blanked and the instance metadata
#: service disabled, so nothing reaches beyond loopback or the real ~/.aws.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "dummy-secret-never-logged",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1",
}


class MotoServer:
    """moto's S3 in this process, on a free 127.0.0.1 port.

    All moto servers of one process share their buckets, so tests use unique
    bucket names.
    """

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self._stopped = False

    def client(self) -> BaseClient:
        """A client for the test's own setup and inspection (explicit dummy keys)."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def create_bucket(self, prefix: str = "bucket") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop serving and close the listening socket, so connections are refused
        (a socket left open would accept them and hang until the read timeout)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.stop()
        self._server._server.server_close()  # type: ignore[union-attr]  # stop() leaves it open


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


def s3_storage_for(moto: MotoServer, tmp_path: Path, **kwargs: Any) -> S3Storage:
    options: dict[str, Any] = {
        "bucket": moto.create_bucket("conformance"),
        "prefix": "/blobs/",
        "endpoint_url": moto.url,
        "region": REGION,
        "staging_dir": tmp_path / "staging",
    }
    options.update(kwargs)
    return S3Storage(**options)


# -- the conformance suite, once per backend ------------------------------------------

@pytest.fixture(params=["filesystem", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "filesystem":
        return FilesystemStorage(tmp_path / "packages")
    request.getfixturevalue("aws_env")
    return s3_storage_for(request.getfixturevalue("moto"), tmp_path)


class TestStorageConformance(StorageConformance):
    @pytest.fixture
    def large_object_size(self) -> int:
        """Two and a bit s3 parts, so the large object is a real multipart upload."""
        return 2 * MULTIPART_CHUNKSIZE + 4321


# -- s3 only -----------------------------------------------------------------------

@pytest.fixture
async def s3(moto: MotoServer, tmp_path: Path, aws_env: None) -> AsyncIterator[S3Storage]:
    storage = s3_storage_for(moto, tmp_path)
    await storage.startup()
    yield storage
    await storage.shutdown()


@pytest.mark.anyio
async def test_blobs_live_under_the_prefix_and_large_ones_are_multipart(s3: S3Storage, moto: MotoServer) -> None:
    small, large = new_blob_key("app", "default"), new_blob_key("app", "default")
    size = 2 * MULTIPART_CHUNKSIZE + 1
    await put_bytes(s3, small, b"small")
    await put_bytes(s3, large, os.urandom(size))
    listed = moto.client().list_objects_v2(Bucket=s3.bucket)
    assert sorted(obj["Key"] for obj in listed["Contents"]) == sorted([f"blobs/{small}", f"blobs/{large}"])
    etag = moto.client().head_object(Bucket=s3.bucket, Key=f"blobs/{large}")["ETag"]
    assert etag.strip('"').endswith(f"-{math.ceil(size / MULTIPART_CHUNKSIZE)}")


@pytest.mark.anyio
async def test_a_multipart_upload_failing_midway_is_aborted(moto: MotoServer, tmp_path: Path, aws_env: None) -> None:
    """Part 2 fails as if the endpoint went away: nothing under the key, no upload left open."""

    def failing_client(endpoint_url: str, region: str) -> BaseClient:
        client = make_s3_client(endpoint_url, region)

        def fail_part_two(params: dict[str, Any], **_: Any) -> None:
            if params.get("PartNumber") == 2:
                raise EndpointConnectionError(endpoint_url=endpoint_url)

        client.meta.events.register("before-parameter-build.s3.UploadPart", fail_part_two)
        return client

    storage = s3_storage_for(moto, tmp_path, client_factory=failing_client)
    await storage.startup()
    key = new_blob_key("app", "default")
    staged = await stage(storage, os.urandom(2 * MULTIPART_CHUNKSIZE + 1))
    with pytest.raises(ObjectStoreException, match="EndpointConnectionError"):
        await storage.put(staged, key)
    assert not await storage.exists(key)
    assert moto.client().list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []
    await storage.shutdown()


@pytest.mark.anyio
async def test_an_unreachable_endpoint_is_an_object_store_exception(tmp_path: Path, aws_env: None) -> None:
    storage = S3Storage("source-packages", "", f"http://127.0.0.1:{free_port()}", REGION, tmp_path / "staging")
    with pytest.raises(ObjectStoreException, match="unreachable"):
        await storage.startup()
    key = new_blob_key("app", "default")
    staged = await stage(storage, b"bytes")
    with pytest.raises(ObjectStoreException, match="EndpointConnectionError"):
        await storage.put(staged, key)
    with pytest.raises(ObjectStoreException):
        await storage.exists(key)
    with pytest.raises(ObjectStoreException):
        await read_blob(storage, key)
    with pytest.raises(ObjectStoreException):
        await storage.delete(key)
    await storage.shutdown()


@pytest.mark.anyio
async def test_a_missing_bucket_stops_startup(moto: MotoServer, tmp_path: Path, aws_env: None) -> None:
    storage = s3_storage_for(moto, tmp_path, bucket=f"missing-{uuid.uuid4().hex[:12]}")
    with pytest.raises(ObjectStoreException, match="does not exist"):
        await storage.startup()
    await storage.shutdown()


def test_selected_and_configured_through_the_settings_table(tmp_path: Path) -> None:
    """The entry point registers the plugin; [storage.s3] keys reach it; staging is the core's key."""
    config = tmp_path / "registry.toml"
    config.write_text(to_toml({
        "database": {"path": "registry.db"},
        "storage": {"backend": "s3", "staging_dir": "staging"},
        "storage.s3": {"bucket": "packages", "prefix": "registry/", "endpoint_url": "http://127.0.0.1:9000",
                       "region": "eu-west-1"},
    }))
    settings, pm = load_settings(config)
    storage = build_registry(settings, pm).storage
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.endpoint_url, storage.region) == (
        "packages", "registry/", "http://127.0.0.1:9000", "eu-west-1")
    assert storage.staging_dir == tmp_path / "staging"
    assert storage.object_key("app/default/abc") == "registry/app/default/abc"


def test_naming_the_builtin_module_in_plugins_modules_too_is_harmless(tmp_path: Path) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(to_toml({"storage": {"backend": "s3"}, "plugins": {"modules": ["registry_plugins.storage_s3"]}}))
    settings, pm = load_settings(config)
    assert isinstance(build_registry(settings, pm).storage, S3Storage)


def test_credentials_cannot_be_configured(tmp_path: Path) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(to_toml({"storage.s3": {"aws_secret_access_key": "not here"}}))
    with pytest.raises(SettingsError, match=r"storage\.s3\.aws_secret_access_key"):
        load_settings(config)


@pytest.mark.parametrize("key", ["", "a//b", "a/../b", "./a", "a/."])
def test_keys_that_could_alias_another_are_refused(key: str, tmp_path: Path) -> None:
    storage = S3Storage("b", "", "", REGION, tmp_path)
    with pytest.raises(ValueError, match="invalid blob key"):
        storage.object_key(key)


def test_a_blob_folder_is_synced_up_to_the_root_by_the_first_put_into_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A put makes its rename durable (its folder synced) and, the first time
    this storage object puts into a folder, the folder's own entry and its
    parent's, up to the root: whoever made the folder (another upload that has
    not synced its parent yet, another process) and whether or not it existed.
    The folder syncs are recorded rather than lost to a power cut, which no
    test can make."""
    import registry_plugins.storage_filesystem as filesystem

    synced: list[Path] = []
    real_sync = filesystem._fsync_dir
    monkeypatch.setattr(filesystem, "_fsync_dir", lambda folder: (synced.append(folder), real_sync(folder)))
    root = tmp_path / "packages"
    storage = FilesystemStorage(root)

    async def put(key: str) -> None:
        await storage.put(await stage(storage, b"data"), key)

    async def scenario() -> list[list[Path]]:
        await storage.startup()
        rounds = []
        (root / "app" / "made-by-another").mkdir(parents=True)  # as a concurrent upload leaves it
        for key in ("app/made-by-another/" + "a" * 32, "app/made-by-another/" + "b" * 32,
                    "app/new/" + "c" * 32, "other/new/" + "d" * 32, "other/new/" + "e" * 32):
            if key.endswith("e" * 32):
                shutil.rmtree(root / "other")  # taken away meanwhile (by hand): made again, new
            synced.clear()
            await put(key)
            rounds.append(list(synced))
        return rounds

    first, second, new_module, new_app, made_again = anyio.run(scenario)
    assert first == [root / "app" / "made-by-another", root / "app", root]
    assert second == [root / "app" / "made-by-another"]  # known synced: the rename's folder only
    assert new_module == [root / "app" / "new", root / "app", root]
    assert new_app == made_again == [root / "other" / "new", root / "other", root]
