"""Cluster suite: every core busy, several stores (``python benchmarks/run.py --suite cluster [--quick]``).

Three measurements, each against ``registry serve`` subprocesses on loopback:

- **big uploads**: aggregate MB/s (10^6 bytes/s) of 8 concurrent 64 MiB
  uploads (``curl -F``, one process each) with ``--workers 1`` and
  ``--workers 2``, SQLite and the filesystem backend; the target is 2 workers
  at least 1.6x one.
- **small uploads**: 1 KiB packages uploaded per second by 16 clients (4
  processes of 4 threads, each a sequential keep-alive client), with 1 and 2
  workers, on SQLite and on PostgreSQL, and the same clients uploading to
  pypiserver (:mod:`peer`) unless ``--skip-peer``.
- **list latency**: p50/p99 of the record store's first page (100 records,
  newest first) and last page at 1k, 10k and 100k records, all in one module
  and spread over 1,000 applications, on SQLite and PostgreSQL; stores are
  filled through their own ``import_records`` (as :mod:`scale` does). The
  target: the first page within 2x from the smallest to the largest size.
  Spread over 1,000 applications, the first page of the applications
  listing is timed as well.

PostgreSQL is a throwaway cluster started from the server binaries (as the
tests do; skipped with a note when they are missing). ``--quick`` uses 16 MiB
uploads, 2-second rates and 1k/10k records. It prints each target with met or
missed and writes ``benchmarks/results/cluster.json``. Targets are reported,
never asserted; numbers are only as quiet as the machine.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import peer
from clients import multipart_args
from scale import _tiny_tar, registry_command
from servers import ServerProcess, free_port
from workload import MIB, make_package

CODE, MODULE = "bench", "default"
PACKAGES = f"/bkapps/applications/{CODE}/modules/{MODULE}/source_package/"
MB = 1_000_000
CONCURRENT_UPLOADS = 8
CLIENT_PROCESSES, CLIENT_THREADS = 4, 4  # 16 clients
LIST_CALLS = 200
TARGET_WORKERS_RATIO = 1.6
TARGET_FIRST_PAGE_RATIO = 2.0


@dataclass(frozen=True)
class Sizes:
    """How big a run is: full by default, smaller with ``--quick``."""

    upload_bytes: int
    upload_rounds: int
    rate_seconds: float
    records: tuple[int, ...]

    @classmethod
    def pick(cls, quick: bool) -> Sizes:
        if quick:
            return cls(16 * MIB, 1, 2.0, (1_000, 10_000))
        return cls(64 * MIB, 2, 5.0, (1_000, 10_000, 100_000))


# -- servers ------------------------------------------------------------------------------

@contextmanager
def registry(root: Path, workers: int, database_url: str = "") -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """``registry serve --workers N`` on a fresh folder (SQLite there, or
    ``database_url``), with a token; stopped on exit."""
    root.mkdir(parents=True)
    database = f"url = {json.dumps(database_url)}" if database_url else f"path = {json.dumps(str(root / 'registry.db'))}"
    config = root / "registry.toml"
    config.write_text("\n".join([
        "[server]", 'host = "127.0.0.1"', "",
        "[database]", database, "",
        "[storage]", 'backend = "filesystem"', "",
        "[storage.filesystem]", f"root = {json.dumps(str(root / 'packages'))}", "",
        "[ui]", "enabled = false", "",
    ]))
    command = registry_command()
    created = subprocess.run([*command, "--config", str(config), "token", "create", "--operator", "bench"],
                             capture_output=True, text=True, check=True, timeout=60)
    auth = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
    port = free_port()
    server = ServerProcess("registry", [*command, "--config", str(config), "serve", "--port", str(port),
                                        "--workers", str(workers)], port, root / "serve.log", ready_path="/healthz")
    server.start()
    try:
        yield server, auth
    finally:
        server.stop()


# -- big uploads ----------------------------------------------------------------------------

def big_uploads(workdir: Path, payload: Path, workers: int, rounds: int) -> dict[str, Any]:
    """Aggregate MB/s of :data:`CONCURRENT_UPLOADS` concurrent uploads of ``payload`` (median of ``rounds``)."""
    size = payload.stat().st_size
    walls = []
    with registry(workdir / f"big-{workers}", workers) as (server, auth):
        url = f"{server.url}{PACKAGES}"
        _concurrent_curls(url, payload, auth, ["warm-up"])
        for round_ in range(rounds):
            os.sync()  # the previous round's writes are not this round's cost
            versions = [f"{round_}.{n}" for n in range(CONCURRENT_UPLOADS)]
            walls.append(_concurrent_curls(url, payload, auth, versions))
    wall = statistics.median(walls)
    result = {"workers": workers, "uploads": CONCURRENT_UPLOADS, "bytes_each": size,
              "wall_s": [round(w, 3) for w in walls], "aggregate_mb_per_s": round(CONCURRENT_UPLOADS * size / wall / MB, 1)}
    print(f"  big uploads, --workers {workers}: {result['aggregate_mb_per_s']} MB/s aggregate", flush=True)
    return result


def _concurrent_curls(url: str, payload: Path, auth: dict[str, str], versions: list[str]) -> float:
    """Upload ``payload`` once per version, all at once; the wall-clock seconds until the last is stored."""
    commands = [["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}",
                 *multipart_args(url, payload, "package", "bench.tar.gz", {"version": version}, auth)]
                for version in versions]
    started = time.perf_counter()
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for command in commands]
    outputs = [process.communicate(timeout=1800) for process in processes]
    wall = time.perf_counter() - started
    for (out, err), version in zip(outputs, versions, strict=True):
        if out.decode().strip() != "201":
            raise RuntimeError(f"upload of version {version}: HTTP {out.decode()!r} {err.decode(errors='replace')}")
    return wall


# -- small uploads ---------------------------------------------------------------------------

def _upload_request(kind: str, client: httpx.Client, version: str, body: bytes) -> httpx.Response:
    if kind == "registry":
        return client.post(PACKAGES, data={"version": version},
                           files={"package": (f"small-{version}.tar.gz", body, "application/gzip")})
    return client.post("/", data=peer.upload_fields(version),
                       files={"content": (f"bench-{version}.tar.gz", body, "application/gzip")})


def _client_process(kind: str, url: str, headers: dict[str, str], start: float, seconds: float,
                    process: int) -> tuple[int, int, float]:
    """One client process: :data:`CLIENT_THREADS` sequential clients uploading
    from ``start`` (a ``time.time()``) for ``seconds``; (uploads, failures, last finish)."""
    body = _tiny_tar(os.urandom(1024), process)
    counts = [0, 0]
    finished = [start]
    lock = threading.Lock()

    def run(thread: int) -> None:
        done = failed = 0
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            time.sleep(max(0.0, start - time.time()))
            while time.time() < start + seconds:
                answer = _upload_request(kind, client, f"{process}.{thread}.{done + failed}", body)
                if answer.status_code in (200, 201):
                    done += 1
                else:
                    failed += 1
        with lock:
            counts[0] += done
            counts[1] += failed
            finished[0] = max(finished[0], time.time())

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(run, range(CLIENT_THREADS)))
    return counts[0], counts[1], finished[0]


def upload_rate(kind: str, url: str, headers: dict[str, str], seconds: float) -> dict[str, Any]:
    """1 KiB uploads per second from 16 clients in :data:`CLIENT_PROCESSES` processes."""
    start = time.time() + 1.0  # every client connected and waiting
    context = multiprocessing.get_context("spawn")
    with context.Pool(CLIENT_PROCESSES) as pool:
        results = pool.starmap(_client_process, [(kind, url, headers, start, seconds, n)
                                                 for n in range(CLIENT_PROCESSES)])
    done = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results) - start
    return {"uploads": done, "failed": failed, "seconds": round(elapsed, 2),
            "uploads_per_s": round(done / elapsed, 1)}


def small_uploads(workdir: Path, label: str, seconds: float, database_url: Callable[[], str] | None) -> dict[str, Any]:
    """Upload rates with 1 and 2 workers on one store (SQLite when ``database_url`` is None)."""
    results = {}
    for workers in (1, 2):
        url = database_url() if database_url is not None else ""
        with registry(workdir / f"small-{label}-{workers}", workers, url) as (server, auth):
            results[f"workers_{workers}"] = upload_rate("registry", server.url, auth, seconds)
        print(f"  1 KiB uploads, {label}, --workers {workers}: {results[f'workers_{workers}']}", flush=True)
    return results


def peer_uploads(workdir: Path, seconds: float) -> dict[str, Any]:
    server = peer.pypiserver(workdir / "peer").start()
    try:
        result = upload_rate("pypiserver", server.url, {}, seconds)
    finally:
        server.stop()
    print(f"  1 KiB uploads, pypiserver: {result}", flush=True)
    return result


# -- list latency -----------------------------------------------------------------------------

def list_latency(make: Callable[[], Any], label: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    """First and last page p50/p99 (ms) per layout and size; stores filled with ``import_records``."""
    from list_records import records

    from registry.records import Order

    results: dict[str, Any] = {}
    for layout, apps in (("one_module", 1), ("1000_apps", 1000)):
        for size in sizes:
            store = make()
            try:
                store.migrate()
                began = time.perf_counter()
                for batch in records(size, apps):
                    store.import_records(batch)
                filled = time.perf_counter() - began
                count, _ = store.list("app-0", "default", limit=1)
                # Spread over 1,000 applications the listed module grows too (1
                # record at 1k, 100 at 100k): a page of one record keeps the work
                # per page equal, so the ratio shows what the store's size costs.
                limit = 100 if apps == 1 else 1
                page = functools.partial(store.list, "app-0", "default", order_by=Order.CREATED_DESC, limit=limit)
                first = _timed(page)
                last = _timed(functools.partial(page, offset=max(0, count - limit)))
                # across applications: the first page of the applications listing
                apps_page = _timed(functools.partial(store.applications, limit=100)) if apps > 1 else []
            finally:
                store.close()
            row = {"records": size, "listed_module_records": count, "page_limit": limit, "fill_s": round(filled, 2),
                   "first_p50_ms": _q(first, 50), "first_p99_ms": _q(first, 99),
                   "last_p50_ms": _q(last, 50), "last_p99_ms": _q(last, 99)}
            if apps_page:
                row.update(applications_p50_ms=_q(apps_page, 50), applications_p99_ms=_q(apps_page, 99))
            results.setdefault(layout, {})[str(size)] = row
            print(f"  list, {label}, {layout}, {size:,} records: first p50 {row['first_p50_ms']} ms"
                  f" p99 {row['first_p99_ms']} ms, last p50 {row['last_p50_ms']} ms", flush=True)
    return results


def _timed(call: Callable[[], object]) -> list[float]:
    call()  # warm the caches
    samples = []
    for _ in range(LIST_CALLS):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def _q(samples: list[float], q: int) -> float:
    return round(statistics.quantiles(samples, n=100)[q - 1], 3)


# -- the report ---------------------------------------------------------------------------------

def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    big = results["big_uploads"]
    one, two = big["workers_1"]["aggregate_mb_per_s"], big["workers_2"]["aggregate_mb_per_s"]
    rows.append((f"{CONCURRENT_UPLOADS} concurrent big uploads, --workers 2 vs 1",
                 f"{two:.1f} / {one:.1f} MB/s = {two / one:.2f}x (goal >= {TARGET_WORKERS_RATIO}x)",
                 two / one >= TARGET_WORKERS_RATIO))
    small = results["small_uploads"]
    theirs = small.get("pypiserver", {}).get("uploads_per_s")
    for store in ("sqlite", "postgresql"):
        for workers in (1, 2):
            ours = small.get(store, {}).get(f"workers_{workers}", {}).get("uploads_per_s")
            if ours is None:
                continue
            versus = f" vs pypiserver {theirs:.0f} /s = {ours / theirs:.2f}x" if theirs else ""
            rows.append((f"1 KiB uploads/s, 16 clients, {store}, --workers {workers}", f"{ours:.0f} /s{versus}", None))
    for store, layouts in results["list"].items():
        for layout, by_size in layouts.items():
            low, high = by_size[min(by_size, key=int)], by_size[max(by_size, key=int)]
            ratio = high["first_p50_ms"] / low["first_p50_ms"]
            held = (f", pages of {high['page_limit']} record(s): the module holds"
                    f" {low['listed_module_records']:,} vs {high['listed_module_records']:,}"
                    if layout == "1000_apps" else "")
            rows.append((f"first page p50, {store}, {layout.replace('_', ' ')}, {high['records']:,} vs {low['records']:,}",
                         (f"{high['first_p50_ms']:.2f} / {low['first_p50_ms']:.2f} ms = {ratio:.2f}x"
                          f" (goal <= {TARGET_FIRST_PAGE_RATIO}x{held})"), ratio <= TARGET_FIRST_PAGE_RATIO))
            if "applications_p50_ms" in high:
                grew = high["applications_p50_ms"] / low["applications_p50_ms"]
                rows.append((f"applications page p50, {store}, {high['records']:,} vs {low['records']:,}",
                             (f"{high['applications_p50_ms']:.2f} / {low['applications_p50_ms']:.2f} ms"
                              f" = {grew:.2f}x (goal <= {TARGET_FIRST_PAGE_RATIO}x)"), grew <= TARGET_FIRST_PAGE_RATIO))
    return rows


def main(workdir: Path, skip_peer: bool, output: Path, quick: bool = False) -> int:
    import list_records

    sizes = Sizes.pick(quick)
    load = os.getloadavg()[0]
    print(f"cluster suite{' (quick)' if quick else ''}: {os.cpu_count()} cores, load average {load:.2f}"
          " (a shared machine skews absolute numbers)", flush=True)
    if not skip_peer:
        peer.ensure_venv()
    payload = workdir / "bench.tar.gz"
    make_package(payload, sizes.upload_bytes)
    results: dict[str, Any] = {"load_average_at_start": load, "quick": quick, "cores": os.cpu_count(),
                               "notes": []}
    results["big_uploads"] = {f"workers_{w}": big_uploads(workdir, payload, w, sizes.upload_rounds) for w in (1, 2)}
    payload.unlink()
    results["small_uploads"] = {"sqlite": small_uploads(workdir, "sqlite", sizes.rate_seconds, None)}
    if not skip_peer:
        results["small_uploads"]["pypiserver"] = peer_uploads(workdir, sizes.rate_seconds)
    results["list"] = {"sqlite": list_latency(
        lambda: list_records.SQLiteStore(workdir / f"list-{time.monotonic_ns()}.db"), "sqlite", sizes.records)}
    try:
        with list_records.postgres(None) as new_database:
            results["small_uploads"]["postgresql"] = small_uploads(workdir, "postgresql", sizes.rate_seconds,
                                                                   new_database)
            results["list"]["postgresql"] = list_latency(
                lambda: list_records.PostgresStore(new_database(), pool_size=2), "postgresql", sizes.records)
    except SystemExit as exc:  # no server binaries
        results["notes"].append(f"PostgreSQL not measured: {exc}")
        print(f"  PostgreSQL not measured: {exc}", flush=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    rows = targets(results)
    results["targets"] = [{"target": name, "measured": value, "met": met} for name, value, met in rows]
    print()
    print(f"{'target':<72} {'measured':<58} result")
    for name, value, met in rows:
        print(f"{name:<72} {value:<58} {'-' if met is None else ('met' if met else 'missed')}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {output}")
    return 0
