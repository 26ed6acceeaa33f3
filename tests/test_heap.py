"""A serving process keeps the memory of its transfer buffers (registry/heap.py).

Measured from outside, on a live ``registry serve``: the page faults the
process takes while it receives a package it has received once before. With
glibc's default thresholds the heap is given back after each request (and
each tus PATCH) and faulted in again, a fault per 4 KiB of buffer: for a
32 MiB package, 4,000-5,500 faults over tus in 8 MiB PATCHes and 1,700-5,300
as a file upload, where the kept heap took 0-110 (the fewer of two uploads).
Linux with glibc only (``/proc``, ``mallopt``).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from registry.heap import ARENA_MAX
from registry.tus import encode_metadata
from tests.helpers import Api, RegistryProcess, base_config, merge, start_registry
from tests.test_jobs import big_package

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="reads /proc; glibc's malloc")

TUS = {"Tus-Resumable": "1.0.0"}
SIZE = 32 * 1024 * 1024
CHUNK = 8 * 1024 * 1024
#: At most one page fault per this many bytes received (the default heap took one per 6-20 KiB).
BYTES_PER_FAULT = 64 * 1024
#: What glibc reserves for each heap of a thread arena (HEAP_MAX_SIZE on
#: 64-bit), at an address aligned to its size.
ARENA_HEAP = 64 * 1024 * 1024


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


def thread_arena_heaps(pid: int) -> int:
    """How many heaps of glibc's thread arenas the process has: anonymous
    reservations of :data:`ARENA_HEAP` at an address aligned to it, used
    (read-write) from the start, the rest without access (``/proc/PID/maps``).
    A heap the kernel merged with a neighbour is not counted: never more than
    there are."""
    spans: list[tuple[int, int, str]] = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[4] == "0":  # anonymous, no name
            start, end = (int(x, 16) for x in fields[0].split("-"))
            spans.append((start, end, fields[1]))
    heaps = 0
    for (start, end, perms), after in zip(spans, [*spans[1:], (0, 0, "")], strict=True):
        if start % ARENA_HEAP or perms != "rw-p":
            continue
        used_up = end - start == ARENA_HEAP
        reserved = after[0] == end and after[2] == "---p" and after[1] - start == ARENA_HEAP
        heaps += used_up or reserved
    return heaps


def test_the_threads_share_few_heaps(live: tuple[RegistryProcess, Api]) -> None:
    """Each glibc arena keeps up to the trim threshold of free memory, and by
    default a thread gets an arena of its own, up to eight per core: the
    resident size after a mix of uploads and downloads then climbed past the
    150 MB that 200 downloads at once may take. The serving process caps the
    arenas, so what they keep is bounded whatever the threads."""
    process, api = live
    assert process.process is not None
    stored = api.http.post(Api.path("heap"), files={"package": ("p.tar.gz", big_package(1024 * 1024))},
                           data={"version": "3.0.0"})
    assert stored.status_code == 201, stored.text
    url = Api.path("heap", suffix=f"{stored.json()['id']}/download/")

    def download(_: int) -> None:
        answer = api.http.get(url)
        assert answer.status_code == 200, answer.text

    with ThreadPoolExecutor(16) as pool:  # many requests at once: many of the server's threads allocate
        list(pool.map(download, range(64)))
    heaps = thread_arena_heaps(process.process.pid)
    assert heaps <= ARENA_MAX - 1, f"{heaps} thread arenas' heaps (the main arena is the process's own heap)"
