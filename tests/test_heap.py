"""A serving process keeps the memory of its transfer buffers (registry/heap.py).

Measured from outside, on a live ``registry serve``: the page faults the
process takes while it receives a package it has received once before. With
glibc's default thresholds the heap is given back after each request (and
each tus PATCH) and faulted in again, a fault per 4 KiB of buffer: for a
32 MiB package, 4,000-5,500 faults over tus in 8 MiB PATCHes and 1,700-5,300
as a file upload, where the kept heap took 0-110 (the fewer of two uploads).
Linux only (``/proc``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry.tus import encode_metadata
from tests.helpers import Api, RegistryProcess, base_config, merge, start_registry
from tests.test_jobs import big_package

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

TUS = {"Tus-Resumable": "1.0.0"}
SIZE = 32 * 1024 * 1024
CHUNK = 8 * 1024 * 1024
#: At most one page fault per this many bytes received (the default heap took one per 6-20 KiB).
BYTES_PER_FAULT = 64 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, Api]]:
    root = tmp_path_factory.mktemp("heap")
    process = start_registry(root, merge(base_config(root), {"limits": {"max_package_size": 4 * SIZE}}))
    client = Api(process.url, process.token("heap"))
    yield process, client
    client.close()
    process.stop()


def minor_faults(pid: int) -> int:
    """Minor page faults of the whole process so far (``/proc/PID/stat``, field 10)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


def tus_upload(api: Api, data: bytes, version: str) -> None:
    """Upload ``data`` over tus in :data:`CHUNK` PATCHes; check it was stored."""
    created = api.http.post(Api.path("heap", suffix="uploads/"), headers={
        **TUS, "Upload-Length": str(len(data)),
        "Upload-Metadata": encode_metadata({"filename": "p.tar.gz", "version": version})})
    assert created.status_code == 201, created.text
    url = created.headers["location"]
    for offset in range(0, len(data), CHUNK):
        answer = api.http.patch(url, content=data[offset:offset + CHUNK], headers={
            **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
        assert answer.status_code == 204, answer.text
    assert api.http.get(url).json()["state"] == "succeeded"


def file_upload(api: Api, data: bytes, version: str) -> None:
    answer = api.http.post(Api.path("heap"), files={"package": ("p.tar.gz", data)}, data={"version": version})
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize(("upload", "major"), [(tus_upload, 1), (file_upload, 2)], ids=["tus", "file"])
def test_a_repeated_upload_reuses_the_heap(live: tuple[RegistryProcess, Api],
                                           upload: Callable[[Api, bytes, str], None], major: int) -> None:
    process, api = live
    assert process.process is not None
    data = big_package(SIZE)
    upload(api, data, f"{major}.0.0")  # the first one grows the heap
    faults = []
    for patch in (1, 2):  # the fewer of two: a thread started meanwhile faults its own memory in once
        before = minor_faults(process.process.pid)
        upload(api, data, f"{major}.0.{patch}")
        faults.append(minor_faults(process.process.pid) - before)
    assert min(faults) < len(data) // BYTES_PER_FAULT, f"{faults} page faults receiving {len(data)} bytes"
