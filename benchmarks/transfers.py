"""Transfers suite: what transfers in flight cost (``python benchmarks/run.py --suite transfers``).

Against one ``registry serve`` (``--workers N`` with ``--workers``), with a
lean asyncio client on loopback (one process, raw HTTP/1.1, so the client
costs the shared cores as little as possible):

- 64 uploads of a 16 MiB package 4 in flight at a time, and all 64 at once,
  each twice in the order 4, 64, 64, 4 (drift in the machine's speed over
  the run counts against both alike): aggregate MB/s of each (all bytes of
  its two runs over their summed time), and the server's peak thread count
  and peak RSS during the 64;
- 200 concurrent downloads of a 16 MiB package: the server's peak RSS.

Each upload run starts from the same page cache: run as root, it syncs and
drops the clean page cache first (``/proc/sys/vm/drop_caches``). On the
development VM writes cost several times more kernel time once about 1 GiB
of new page cache has been filled since the last drop, and each run writes
1 GiB: without the drop, whichever run comes later meets that state. The
output says whether the cache was dropped.

Peak RSS and threads are sampled from ``/proc`` every 20 ms, summed over the
server process and its children (the workers). Every upload and download is
checked (status, sha256, length). It prints each target with met or missed
and writes ``benchmarks/results/transfers.json``. Targets are reported,
never asserted; other work on the machine skews the numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Self

from scale import CODE, MODULE, PACKAGES, registry_command
from servers import ServerProcess, free_port

MB = 1_000_000
MiB = 1024 * 1024
UPLOADS = 64
FEW = 4
DOWNLOADS = 200
SIZE = 16 * MiB
SEND_SIZE = 256 * 1024
BOUNDARY = "transfers-bench-boundary"


class TreeSampler:
    """Polls ``/proc`` for a process tree's summed ``VmRSS`` and thread count;
    :meth:`take` gives both peaks since the previous call."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self._lock = threading.Lock()
        self._peaks = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> tuple[int, int]:
        rss = threads = 0
        for pid in _tree(self.pid):
            fields = _status(pid)
            rss += fields.get("VmRSS", 0) * 1024
            threads += fields.get("Threads", 0)
        return rss, threads

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss, threads = self.now()
            with self._lock:
                self._peaks = (max(self._peaks[0], rss), max(self._peaks[1], threads))

    def take(self) -> tuple[int, int]:
        """(peak RSS bytes, peak threads) since the previous call, then reset."""
        with self._lock:
            peaks, self._peaks = self._peaks, self.now()
        return peaks


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (from each task's ``children`` list)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
        except (OSError, ValueError):
            pass
    return found


def _status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "Threads"):
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


def make_package(size: int) -> bytes:
    """A tar.gz of about ``size`` bytes (incompressible content, fast to gzip)."""
    out = io.BytesIO()
    content = os.urandom(size - 64 * 1024)
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("src/blob.bin")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
        desc = b"spec_version: 2\napp_version: 1.0\n"
        info = tarfile.TarInfo("app_desc.yaml")
        info.size = len(desc)
        tar.addfile(info, io.BytesIO(desc))
    return out.getvalue()


def start_registry(root: Path, workers: int) -> tuple[ServerProcess, str]:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "registry.toml"
    config.write_text("\n".join([
        "[server]", 'host = "127.0.0.1"', "",
        "[database]", f"path = {json.dumps(str(root / 'registry.db'))}", "",
        "[storage]", 'backend = "filesystem"', "",
        "[storage.filesystem]", f"root = {json.dumps(str(root / 'packages'))}", "",
        "[limits]", f"max_package_size = {64 * MiB}", "",
    ]))
    import subprocess

    command = registry_command()
    created = subprocess.run([*command, "--config", str(config), "token", "create", "--operator", "bench"],
                             capture_output=True, text=True, check=True, timeout=60)
    token = created.stdout.strip().splitlines()[-1]
    port = free_port()
    server = ServerProcess("registry", [*command, "--config", str(config), "serve", "--port", str(port),
                                        "--workers", str(workers)],
                           port, root / "serve.log", ready_path="/healthz")
    return server.start(), token


async def _exchange(port: int, head: bytes, parts: list[bytes | memoryview]) -> tuple[int, bytes]:
    """Send a request, read the whole response: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in parts:
            view = memoryview(part)
            for start in range(0, len(view), SEND_SIZE):
                writer.write(view[start:start + SEND_SIZE])
                await writer.drain()
        await writer.drain()
        status, length = await _read_head(reader)
        body = await reader.readexactly(length)
        return status, body
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, length


async def upload(port: int, token: str, package: bytes, version: str) -> dict[str, Any]:
    before = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n{version}\r\n"
              f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"p-{version}.tar.gz\"\r\n"
              "Content-Type: application/gzip\r\n\r\n").encode()
    after = f"\r\n--{BOUNDARY}--\r\n".encode()
    length = len(before) + len(package) + len(after)
    head = (f"POST {PACKAGES} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n"
            "Connection: close\r\n\r\n").encode()
    status, body = await _exchange(port, head, [before, package, after])
    if status != 201:
        raise RuntimeError(f"upload {version}: {status} {body[:300]!r}")
    return json.loads(body)  # type: ignore[no-any-return]


async def upload_many(port: int, token: str, package: bytes, count: int, in_flight: int, prefix: str) -> float:
    """Seconds to upload ``count`` packages with ``in_flight`` at a time; checks every sha256."""
    expected = hashlib.sha256(package).hexdigest()
    gate = asyncio.Semaphore(in_flight)

    async def one(n: int) -> None:
        async with gate:
            record = await upload(port, token, package, f"{prefix}.{n}")
        if record.get("sha256_signature", expected) != expected:
            raise RuntimeError(f"upload {prefix}.{n}: sha256 {record.get('sha256_signature')}")

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return time.perf_counter() - started


async def download(port: int, token: str, path: str, size: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=256 * 1024)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        status, length = await _read_head(reader)
        if status != 200 or length != size:
            raise RuntimeError(f"download: {status}, {length} bytes")
        received = 0
        while received < length:
            chunk = await reader.read(256 * 1024)
            if not chunk:
                raise RuntimeError(f"download cut at {received} of {length} bytes")
            received += len(chunk)
    finally:
        writer.close()


async def download_many(port: int, token: str, path: str, size: int, count: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(download(port, token, path, size) for _ in range(count)))
    return time.perf_counter() - started


def drop_page_cache() -> bool:
    """Write dirty pages out and drop the clean page cache; False without the right (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    except OSError:
        return False
    return True


#: The upload runs, as (uploads in flight, version prefix): ABBA, so a trend
#: over the run weighs on both sizes alike.
UPLOAD_RUNS = [(FEW, "1"), (UPLOADS, "2"), (UPLOADS, "3"), (FEW, "4")]


def measure(workdir: Path, workers: int) -> dict[str, Any]:
    """Uploads on one server, then downloads on a fresh one over the same
    root (memory a process kept from the uploads would count against the downloads)."""
    package = make_package(SIZE)
    root = workdir / "transfers"
    results: dict[str, Any] = {"workers": workers, "package_bytes": len(package)}
    server, token = start_registry(root, workers)
    try:
        with TreeSampler(server.pid) as sampler:
            results["idle_rss_bytes"], results["idle_threads"] = sampler.now()
            asyncio.run(upload_many(server.port, token, package, FEW, FEW, "0"))  # warm-up
            sampler.take()
            seconds = {FEW: 0.0, UPLOADS: 0.0}
            runs: dict[int, list[float]] = {FEW: [], UPLOADS: []}
            peaks: dict[int, tuple[int, int]] = {FEW: (0, 0), UPLOADS: (0, 0)}
            for in_flight, prefix in UPLOAD_RUNS:
                results["page_cache_dropped"] = drop_page_cache()
                sampler.take()
                took = asyncio.run(upload_many(server.port, token, package, UPLOADS, in_flight, prefix))
                rss, threads = sampler.take()
                seconds[in_flight] += took
                runs[in_flight].append(UPLOADS * len(package) / took / MB)
                peaks[in_flight] = (max(peaks[in_flight][0], rss), max(peaks[in_flight][1], threads))
            for in_flight, key in ((FEW, "few"), (UPLOADS, "many")):
                results[f"{key}_mbps"] = len(runs[in_flight]) * UPLOADS * len(package) / seconds[in_flight] / MB
                results[f"{key}_runs_mbps"] = runs[in_flight]
                results[f"{key}_rss_bytes"], results[f"{key}_threads"] = peaks[in_flight]
    finally:
        server.stop()
    cache = ("page cache dropped before each run" if results["page_cache_dropped"]
             else "page cache NOT dropped (needs root): a later run may meet the VM's slow-write state")
    print(f"  uploads ({cache}): {FEW} in flight {results['few_mbps']:.1f} MB/s "
          f"({', '.join(f'{v:.0f}' for v in results['few_runs_mbps'])}), {UPLOADS} in flight "
          f"{results['many_mbps']:.1f} MB/s ({', '.join(f'{v:.0f}' for v in results['many_runs_mbps'])}), "
          f"{results['many_threads']} threads, {results['many_rss_bytes'] / MB:.0f} MB", flush=True)
    server, token = start_registry(root, workers)
    try:
        path = f"{PACKAGES}{_record_id(server.port, token)}/download/"
        asyncio.run(download_many(server.port, token, path, len(package), FEW))  # warm-up
        with TreeSampler(server.pid) as sampler:
            results["download_idle_rss_bytes"], _ = sampler.now()
            seconds = asyncio.run(download_many(server.port, token, path, len(package), DOWNLOADS))
            results["downloads_mbps"] = DOWNLOADS * len(package) / seconds / MB
            results["downloads_rss_bytes"], results["downloads_threads"] = sampler.take()
    finally:
        server.stop()
    print(f"  downloads: {DOWNLOADS} at once {results['downloads_mbps']:.1f} MB/s, "
          f"{results['downloads_rss_bytes'] / MB:.0f} MB (before: {results['download_idle_rss_bytes'] / MB:.0f} MB), "
          f"{results['downloads_threads']} threads", flush=True)
    return results


def _record_id(port: int, token: str) -> int:
    async def first() -> int:
        head = (f"GET {PACKAGES}?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                "Connection: close\r\n\r\n").encode()
        status, body = await _exchange(port, head, [])
        if status != 200:
            raise RuntimeError(f"list: {status}")
        return int(json.loads(body)["results"][0]["id"])

    return asyncio.run(first())


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    ratio = r["many_mbps"] / r["few_mbps"]
    return [
        (f"{UPLOADS} uploads in flight >= 90% of {FEW} in flight",
         f"{r['many_mbps']:.1f} / {r['few_mbps']:.1f} MB/s = {ratio:.0%}", ratio >= 0.9),
        (f"{UPLOADS} uploads in flight: fewer than 60 threads", f"{r['many_threads']} threads", r["many_threads"] < 60),
        (f"{UPLOADS} uploads in flight: peak RSS under 200 MB", f"{r['many_rss_bytes'] / MB:.0f} MB",
         r["many_rss_bytes"] < 200 * MB),
        (f"{DOWNLOADS} downloads of 16 MiB: peak RSS under 150 MB", f"{r['downloads_rss_bytes'] / MB:.0f} MB",
         r["downloads_rss_bytes"] < 150 * MB),
    ]


def main(workdir: Path, output: Path, workers: int = 1) -> int:
    load = os.getloadavg()[0]
    print(f"transfers suite ({CODE}/{MODULE}, --workers {workers}): load average {load:.2f} "
          "(a shared machine skews absolute numbers)", flush=True)
    results = measure(workdir, workers)
    print()
    print(f"{'target':<56} {'measured':<36} result")
    for name, value, met in targets(results):
        print(f"{name:<56} {value:<36} {'met' if met else 'missed'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"load_average": load, **results}, indent=2) + "\n")
    print(f"\nwrote {output}")
    return 0
