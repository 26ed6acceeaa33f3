"""Scale suite: what a request costs as a module grows (``python benchmarks/run.py --suite scale``).

For each size (1k, 10k, 100k records in one module) it fills a fresh SQLite
store through the record store's own API (``import_records``, 5,000 a
transaction), starts ``registry serve`` on it and measures, with a plain
HTTP client on loopback:

- the first page, a deep page by ``offset`` (90 % in) and the same depth by
  ``cursor`` (p50 of sequential requests);
- a selective ``search_term`` (p50);
- at the largest size, GET one record (p99) while 64 clients search;
- 1 KiB downloads per second from a 10-file store, against pypiserver
  serving the same 10 files (unless ``--skip-peer``).

It prints each target with met or missed and writes the numbers to
``benchmarks/results/scale.json``. Targets are reported, never asserted. The
numbers are only as quiet as the machine: other work on it skews them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

import peer
from servers import ServerProcess, free_port

HERE = Path(__file__).resolve().parent
CODE, MODULE = "bench", "default"
PACKAGES = f"/bkapps/applications/{CODE}/modules/{MODULE}/source_package/"
SIZES = (1_000, 10_000, 100_000)
BATCH = 5_000
REPEAT = 30


def _record(n: int, start: datetime) -> Any:
    from registry.records import Record

    moment = start + timedelta(milliseconds=n)
    return Record(
        id=n, code=CODE, module=MODULE, version=f"1.{n}.0", package_name=f"service-{n:06d}.tar.gz",
        package_size=1000 + n % 977, sha256=f"{n:064x}", blob_key=f"{CODE}/{MODULE}/fill-{n:08d}",
        format="tar.gz", file_name="", origin="upload", source_url="", is_deleted=False, revived=False,
        deleted_at=None, created=moment, updated=moment, operator="bench",
    )


def fill(db: Path, count: int) -> float:
    """Fill a fresh SQLite store with ``count`` records; returns seconds taken."""
    from registry_plugins.store_sqlite import SQLiteStore

    store = SQLiteStore(db)
    started = time.perf_counter()
    store.migrate()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for first in range(1, count + 1, BATCH):
        store.import_records([_record(n, start) for n in range(first, min(first + BATCH, count + 1))])
    store.close()
    return time.perf_counter() - started


def registry_command() -> list[str]:
    script = Path(sys.executable).parent / "registry"
    return [str(script)] if script.exists() else [sys.executable, "-m", "registry.cli"]


def start_registry(root: Path) -> tuple[ServerProcess, dict[str, str]]:
    config = root / "registry.toml"
    config.write_text("\n".join([
        "[server]", 'host = "127.0.0.1"', "",
        "[database]", f"path = {json.dumps(str(root / 'registry.db'))}", "",
        "[storage]", 'backend = "filesystem"', "",
        "[storage.filesystem]", f"root = {json.dumps(str(root / 'packages'))}", "",
    ]))
    command = registry_command()
    created = subprocess.run([*command, "--config", str(config), "token", "create", "--operator", "bench"],
                             capture_output=True, text=True, check=True, timeout=60)
    auth = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
    port = free_port()
    server = ServerProcess("registry", [*command, "--config", str(config), "serve", "--port", str(port)],
                           port, root / "serve.log", ready_path="/healthz")
    return server.start(), auth


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(client: httpx.Client, url: str, repeat: int = REPEAT) -> list[float]:
    """Milliseconds of ``repeat`` sequential GETs of ``url`` (after one warm-up)."""
    client.get(url).raise_for_status()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(url).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure_size(workdir: Path, count: int, contention: bool) -> dict[str, Any]:
    root = workdir / f"scale-{count}"
    root.mkdir()
    filled = fill(root / "registry.db", count)
    server, auth = start_registry(root)
    result: dict[str, Any] = {"records": count, "fill_s": round(filled, 2)}
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=120) as client:
            result["first_page_ms"] = statistics.median(timed(client, PACKAGES))
            deep = int(count * 0.9)
            result["offset_page_ms"] = statistics.median(timed(client, f"{PACKAGES}?offset={deep}"))
            cursor_url = client.get(f"{PACKAGES}?offset={deep - 100}").json()["next"]
            result["cursor_page_ms"] = statistics.median(timed(client, cursor_url))
            # ten matches whatever the size: service-00010x
            result["search_ms"] = statistics.median(timed(client, f"{PACKAGES}?search_term=service-00010"))
            if contention:
                result.update(get_while_searching(client, server.url, auth))
    finally:
        server.stop()
    print(f"  {count:>7} records: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in result.items()), flush=True)
    return result


def get_while_searching(client: httpx.Client, url: str, auth: dict[str, str]) -> dict[str, Any]:
    """p99 of GET one record while 64 clients search without pause (two-letter terms: a scan)."""
    record_id = client.get(f"{PACKAGES}?limit=1").json()["results"][0]["id"]
    stop = threading.Event()
    searches = [0]

    def search(n: int) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=300) as own:
            while not stop.is_set():
                own.get(f"{PACKAGES}?search_term={n % 10}{(n + 3) % 10}&limit=100")
                searches[0] += 1

    with ThreadPoolExecutor(64) as pool:
        for n in range(64):
            pool.submit(search, n)
        time.sleep(2)
        times = timed(client, f"{PACKAGES}{record_id}/", repeat=100)
        stop.set()
    return {"get_during_search_p50_ms": statistics.median(times), "get_during_search_p99_ms": p(times, 0.99),
            "searches_done": searches[0]}


def small_downloads(workdir: Path, skip_peer: bool, seconds: float = 3.0) -> dict[str, Any]:
    """1 KiB downloads per second from a 10-file store: this registry and pypiserver."""
    body = os.urandom(1024)
    root = workdir / "small"
    root.mkdir()
    server, auth = start_registry(root)
    results: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
            ids = []
            for n in range(10):
                sent = client.post(f"{PACKAGES}", data={"version": f"0.{n}"},
                                   files={"package": (f"small-{n}.tar.gz", _tiny_tar(body, n), "application/gzip")})
                sent.raise_for_status()
                ids.append(sent.json()["id"])
        results["registry_rps"] = _rate(server.url, auth, [f"{PACKAGES}{i}/download/" for i in ids], seconds)
    finally:
        server.stop()
    if not skip_peer:
        peer_server = peer.pypiserver(workdir).start()
        try:
            folder = workdir / "peer-packages"
            for n in range(10):
                (folder / f"bench-0.{n}.tar.gz").write_bytes(body)
            results["pypiserver_rps"] = _rate(peer_server.url, {},
                                              [f"/packages/bench-0.{n}.tar.gz" for n in range(10)], seconds)
        finally:
            peer_server.stop()
    return results


def _tiny_tar(body: bytes, n: int) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"src/file-{n}.bin")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def _rate(url: str, headers: dict[str, str], paths: list[str], seconds: float, clients: int = 8) -> float:
    done = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run(n: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            count = 0
            while time.monotonic() < deadline:
                client.get(paths[(n + count) % len(paths)]).raise_for_status()
                count += 1
            with lock:
                done[0] += count

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return done[0] / seconds


def targets(sizes: dict[int, dict[str, Any]], small: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    low, high = sizes[min(sizes)], sizes[max(sizes)]
    rows: list[tuple[str, str, bool | None]] = []

    def ratio(name: str, key: str, goal: float) -> None:
        value = high[key] / low[key]
        rows.append((name, f"{high[key]:.1f} / {low[key]:.1f} ms = {value:.2f}x (goal <= {goal}x)", value <= goal))

    ratio("first page p50, largest vs smallest", "first_page_ms", 1.5)
    ratio("deep page by cursor p50, largest vs smallest", "cursor_page_ms", 1.5)
    ratio("deep page by offset p50, largest vs smallest (offset is not keyset)", "offset_page_ms", 1.5)
    ratio("search_term p50, largest vs smallest", "search_ms", 2.0)
    if "get_during_search_p99_ms" in high:
        value = high["get_during_search_p99_ms"]
        rows.append(("GET one record p99 while 64 searches run", f"{value:.1f} ms (goal < 20 ms)", value < 20))
    if "pypiserver_rps" in small:
        ours, theirs = small["registry_rps"], small["pypiserver_rps"]
        rows.append(("1 KiB downloads/s vs pypiserver, 10-file store",
                     f"{ours:.0f} vs {theirs:.0f} /s = {ours / theirs:.2f}x (goal >= 1x)", ours >= theirs))
    for name in ("200 downloads of 16 MiB under 150 MB RSS", "64 uploads in flight >= 90% of 4 in flight",
                 "1 KiB uploads/s >= 2x before", "serve start within 2x pypiserver"):
        rows.append((name, "not measured by this suite", None))
    return rows


def main(workdir: Path, skip_peer: bool, output: Path, sizes: tuple[int, ...] = SIZES) -> int:
    load = os.getloadavg()[0]
    print(f"scale suite: load average {load:.2f} (a shared machine skews absolute numbers)", flush=True)
    if not skip_peer:
        peer.ensure_venv()
    results = {count: measure_size(workdir, count, contention=count == max(sizes)) for count in sizes}
    small = small_downloads(workdir, skip_peer)
    print(f"  small downloads: {small}", flush=True)
    print()
    print(f"{'target':<72} {'measured':<52} result")
    for name, value, met in targets(results, small):
        verdict = "-" if met is None else ("met" if met else "missed")
        print(f"{name:<72} {value:<52} {verdict}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"load_average": load, "sizes": results, "small_downloads": small}, indent=2) + "\n")
    print(f"\nwrote {output}")
    return 0
