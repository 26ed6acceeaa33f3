"""Two ``registry serve`` processes on one PostgreSQL database and one S3 bucket
(moto's server) behave as one registry: one winner among racing uploads of a
version spread over both, each instance reads the other's writes, and one
killed mid-upload leaves the other serving with nothing half-written."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from registry.staging import FLUSH_SIZE
from tests.helpers import Api, RegistryProcess, package, start_registry
from tests.test_crash_safety import WAIT, big_package, multipart, wait_for
from tests.test_postgres import pg_config
from tests.test_s3 import PREFIX, s3_config, stored_objects
from tests.test_storage_conformance import DUMMY_AWS_ENV, MotoServer


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[tuple[MotoServer, str, list[RegistryProcess]]]:
    moto = MotoServer()
    bucket = moto.create_bucket("cluster")
    instances: list[RegistryProcess] = []
    try:
        for name in ("a", "b"):
            root = tmp_path / name
            tables = s3_config(root, moto, bucket)
            shared = pg_config(root, pg_url)
            tables["database"], tables["ui"] = shared["database"], shared["ui"]
            instances.append(start_registry(root, tables, env=DUMMY_AWS_ENV))
        yield moto, bucket, instances
    finally:
        for instance in instances:
            instance.stop()
        moto.stop()


def test_two_instances_are_one_registry(cluster: tuple[MotoServer, str, list[RegistryProcess]]) -> None:
    moto, bucket, (a, b) = cluster
    token = a.token("alice")  # made through one instance, valid on both
    api_a, api_b = Api(a.url, token), Api(b.url, token)
    try:
        # racing uploads of one version, other bytes each, spread over both instances
        racers = 8
        barrier = threading.Barrier(racers)

        def race(n: int) -> httpx.Response:
            data = package("1.0.0", salt=f"racer-{n}")
            barrier.wait()
            return (api_a if n % 2 else api_b).upload("shared", data, version="1.0.0")

        with ThreadPoolExecutor(racers) as pool:
            responses = list(pool.map(race, range(racers)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] + [409] * (racers - 1), [r.text for r in responses]
        [winner] = [r.json() for r in responses if r.status_code == 201]
        objects = stored_objects(moto, bucket, "shared")
        assert len(objects) == 1, "the losers' blobs are gone"
        assert hashlib.sha256(next(iter(objects.values()))).hexdigest() == winner["sha256_signature"]
        assert all(key.startswith(PREFIX) for key in objects)

        # read-your-writes across instances
        for reader in (api_a, api_b):
            listed = reader.list("shared").json()
            assert [r["id"] for r in listed["results"]] == [winner["id"]]
            download = reader.download("shared", winner["id"])
            assert hashlib.sha256(download.content).hexdigest() == winner["sha256_signature"]
        made_on_b = api_b.upload("shared", package("2.0.0"), version="2.0.0")
        assert made_on_b.status_code == 201
        assert api_a.get("shared", made_on_b.json()["id"]).json()["version"] == "2.0.0"
        assert api_a.delete("shared", winner["id"]).status_code in (200, 204)
        assert api_b.list("shared").json()["count"] == 1
        restored = api_b.restore("shared", winner["id"])
        assert restored.status_code == 200 and restored.json()["is_deleted"] is False
        assert api_a.list("shared").json()["count"] == 2
        # an overwrite on one instance is what the other serves next
        newer = package("2.0.0", salt="newer")
        assert api_a.upload("shared", newer, version="2.0.0", allow_overwrite=True).status_code == 200
        assert api_b.download("shared", made_on_b.json()["id"]).content == newer
        events = b.cli("events", "--app", "shared", "--json").stdout
        assert events.count('"stored"') == 2 and '"overwritten"' in events
    finally:
        api_a.close()
        api_b.close()


def test_an_instance_killed_mid_upload_leaves_the_other_serving(
        tmp_path: Path, cluster: tuple[MotoServer, str, list[RegistryProcess]]) -> None:
    moto, bucket, (a, b) = cluster
    token = b.token("alice")
    api_b = Api(b.url, token)
    try:
        assert api_b.upload("crashy", package("0.1.0"), version="0.1.0").status_code == 201
        data = big_package("killed")
        body, content_type = multipart(data, "1.0.0")
        head = (
            f"POST /bkapps/applications/crashy/modules/default/source_package/ HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{a.port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        staging = tmp_path / "a" / "staging"

        def staged() -> int:
            return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.is_dir() else 0

        with socket.create_connection(("127.0.0.1", a.port), timeout=WAIT) as client:
            client.sendall(head + body[: len(body) // 2 + FLUSH_SIZE // 2])
            wait_for(lambda: staged() > 0, "part of the upload to reach instance a's staging folder")
            a.kill()
        listed = api_b.list("crashy").json()
        assert [r["version"] for r in listed["results"]] == ["0.1.0"], "nothing half-written"
        again = api_b.upload("crashy", data, version="1.0.0")
        assert again.status_code == 201, again.text
        assert api_b.download("crashy", again.json()["id"]).content == data
        assert len(stored_objects(moto, bucket, "crashy")) == 2
    finally:
        api_b.close()
