"""Throughput benchmark of the Source Package Registry against pypiserver and the raw limits.

Run from the repository's virtualenv::

    python benchmarks/run.py                 # 256 MiB payload, 3 runs of each
    python benchmarks/run.py --size-mib 32   # a quick run

In one run it makes a random ``tar.gz`` of the given size and, in rounds that
interleave all of them, measures what this machine can do at best with it
(copy + sha256 + fsync; ``curl -F`` into a server that discards the body;
``curl -o`` + ``sha256sum`` from a static server; ``curl`` downloading it from
a static server), uploads it to a ``registry serve`` as a file and by link and
downloads it back, and uploads and downloads it with pypiserver (installed on
first use into ``benchmarks/.venv-peer``). It prints a table of median MB/s
(10^6 bytes per second) with the ratios registry/peer and registry/limit, the
servers' peak RSS and how long ``GET /healthz`` takes while a large upload is
in progress, and writes everything to ``benchmarks/results/latest.json``.
The targets are reported, never asserted: the exit status is 0 whatever the
numbers, and non-zero only when a transfer fails.

The tus upload (8 MiB PATCHes, :mod:`tus`) is compared with the file upload
of the same round, on equal terms: both clients stream the file with a few
system calls per MiB (curl; raw HTTP/1.1 with ``sendfile``), and run as root
the page cache is dropped before every transfer that writes (``--drop-caches``,
the default then; see :class:`Benchmark`). For quick A/B runs::

    python benchmarks/run.py --only upload,tus_upload --skip-peer \
        --baseline ../main/.venv/bin/registry   # another checkout, same rounds

Everything listens on 127.0.0.1 and lives in one temporary folder, removed at
the end with every process the benchmark started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clients
import peer
import scale
import transfers
from clients import (
    CurlResult,
    Latencies,
    get_args,
    json_args,
    multipart_args,
    probe_while_running,
    run_curl,
)
from servers import (
    RssSampler,
    ServerProcess,
    cpu_seconds,
    free_port,
    helper_server,
    peak_rss_bytes,
)
from tus import tus_upload
from workload import MIB, copy_and_hash, make_package

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "latest.json"
PAYLOAD_NAME = "bench.tar.gz"
CODE, MODULE = "bench", "default"
PACKAGES_PATH = f"/bkapps/applications/{CODE}/modules/{MODULE}/source_package"
MB = 1_000_000

# Targets: reported, never asserted.
TARGET_UPLOAD_VS_PEER = 3.0
TARGET_UPLOAD_VS_LIMIT = 0.5
TARGET_LINK_VS_LIMIT = 0.5
TARGET_DOWNLOAD_VS_LIMIT = 0.7
TARGET_PEAK_RSS = 150 * MB
TARGET_HEALTHZ_MAX = 0.100
TARGET_TUS_VS_UPLOAD = 0.8
TUS_CHUNK = 8 * MIB
#: The throughput operations' keys (``--only``).
OPERATION_KEYS = frozenset({"upload", "tus_upload", "link_upload", "download", "copy_sha256_fsync", "curl_to_sink",
                            "curl_o_sha256sum", "curl_static_download"})


# -- measurements ------------------------------------------------------------------

@dataclass
class Measurement:
    """Repeated timings of one transfer of ``size`` bytes."""

    size: int
    seconds: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mbps(self) -> float:
        return self.size / self.median / MB

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "median_mb_per_s": round(self.mbps, 1),
            "median_seconds": round(self.median, 4),
            "seconds": [round(s, 4) for s in self.seconds],
            "mb_per_s": [round(self.size / s / MB, 1) for s in self.seconds],
        }
        if self.server_cpu:
            data["server_cpu_seconds"] = [round(c, 3) for c in self.server_cpu]
        return data


def expect(result: CurlResult, statuses: tuple[int, ...], what: str) -> CurlResult:
    """Stop the benchmark when a transfer did not do what it should."""
    if result.status not in statuses:
        raise RuntimeError(f"{what}: HTTP {result.status}: {result.body[:500]!r}")
    return result


@dataclass
class Operation:
    """One kind of timed transfer; ``run_once(round)`` returns its seconds.

    :param group: ``limits``, ``registry``, ``baseline`` or ``peer``.
    :param server: the server whose CPU time and memory to note, if any.
    :param reads: a transfer that only reads what it sends (a download, the
        discarding sink): it runs without the page cache dropped first
        (``--drop-caches``), and ``warm`` (if any) brings its source into the
        cache untimed.
    """

    group: str
    key: str
    label: str
    run_once: Callable[[int], float]
    server: ServerProcess | None = None
    reads: bool = False
    warm: Callable[[], None] | None = None


# -- the benchmark -----------------------------------------------------------------

class Benchmark:
    """One benchmark run in ``workdir``; servers are stopped by ``stack``.

    Every measurement is taken once per round, the limits, the registry and
    the peer one after another, so that all of them see the same conditions:
    on a shared machine, load that comes and goes skews each ratio far less
    than it would if each side were measured in a block of its own. Each
    round starts at another place in the list: whatever runs right after the
    local copy (which frees 256 MiB of page cache) or right after a large
    write (whose pages the kernel is still flushing) is not always the same.

    With ``--drop-caches`` (the default when run as root) the page cache is
    also dropped before every transfer that writes the payload somewhere
    (every upload and the limits that write), and the payload read back into
    it, untimed: on the development VM every write costs several times more
    kernel time once about 1 GiB of new page cache has been handed out in a
    row, so without it a ratio depends on which side of it met that state.
    Transfers that only read (downloads, the discarding sink) keep the cache;
    a download whose source the drop evicted is made once, untimed, first.
    """

    sink: ServerProcess
    static: ServerProcess
    static_url: str
    registry: ServerProcess
    registry_base: str
    auth: dict[str, str]
    baseline: ServerProcess | None
    baseline_base: str
    baseline_auth: dict[str, str]
    peer: ServerProcess | None

    def __init__(self, args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.repeat: int = args.repeat
        self.workdir = workdir
        self.stack = stack
        self.origin_dir = workdir / "origin"
        self.origin_dir.mkdir()
        self.payload = self.origin_dir / PAYLOAD_NAME
        self.size = 0
        self.sha256 = ""
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]
        self.registry_ids: list[int] = []
        self.drop_caches: bool = args.drop_caches

    def start(self, server: ServerProcess) -> ServerProcess:
        """Start ``server`` and make sure it is stopped when the run ends."""
        self.stack.callback(server.stop)
        return server.start()

    def make_payload(self) -> None:
        print(f"making a {self.args.size_mib} MiB random tar.gz ...", flush=True)
        self.size, self.sha256 = make_package(self.payload, self.args.size_mib * MIB)

    def run(self) -> dict[str, dict[str, Any]]:
        """Start every server, measure in rounds, probe latencies (unless ``--only``);
        the results by group: ``limits``, ``registry``, and ``baseline`` and ``peer`` when run."""
        self._start_servers()
        operations = self.operations()
        results = {(op.group, op.key): Measurement(self.size) for op in operations}
        rss: dict[str, int] = {"after_start": peak_rss_bytes(self.registry.pid)}
        with RssSampler(self.registry.pid) as sampler:
            self._warm_up()
            rss["warm_up"] = sampler.take()
            for round_ in range(self.repeat):
                print(f"round {round_ + 1} of {self.repeat}:", flush=True)
                start = round_ * len(operations) // self.repeat
                for op in operations[start:] + operations[:start]:
                    self._run(op, round_, results[(op.group, op.key)])
                    if op.server is self.registry:
                        rss[op.key] = max(rss.get(op.key, 0), sampler.take())
            groups: dict[str, dict[str, Any]] = {"limits": {}, "registry": {}}
            for (group, key), m in results.items():
                groups.setdefault(group, {})[key] = m
            registry = groups["registry"]
            if self.args.only is None:
                registry["healthz_during_upload"] = self._probe_during(self.registry, "/healthz", multipart_args(
                    self.registry_base, self.payload, "package", PAYLOAD_NAME, {"version": "3.0.0"}, self.auth))
                registry["healthz_during_link_upload"] = self._probe_during(self.registry, "/healthz", json_args(
                    f"{self.registry_base}link/", {"package_url": self.static_url, "version": "3.0.1"}, self.auth),
                    "a link upload")
                rss["probes"] = sampler.take()
        registry["peak_rss_bytes"] = peak_rss_bytes(self.registry.pid)
        registry["rss_by_phase_bytes"] = rss
        if self.peer is not None and self.args.only is None:
            peer_results = groups["peer"]
            peer_results["healthz_during_upload"] = self._probe_during(self.peer, "/health", multipart_args(
                f"{self.peer.url}/", self.payload, "content", "bench-3.0.0.tar.gz", peer.upload_fields("3.0.0")))
            peer_results["peak_rss_bytes"] = peak_rss_bytes(self.peer.pid)
        return groups

    def _start_servers(self) -> None:
        """The sink, the static server, the registry and (unless skipped) pypiserver."""
        self.sink = self.start(helper_server("sink", self.workdir))
        self.static = self.start(helper_server("static", self.workdir, root=self.origin_dir))
        self.static_url = f"{self.static.url}/{PAYLOAD_NAME}"
        self.registry, self.auth = self._registry_server(registry_command(), "registry")
        self.registry_base = f"{self.registry.url}{PACKAGES_PATH}/"
        print(f"registry pid {self.registry.pid}, sink pid {self.sink.pid}, static pid {self.static.pid}", flush=True)
        self.baseline = None
        if self.args.baseline is not None:
            self.baseline, self.baseline_auth = self._registry_server([str(self.args.baseline)], "baseline")
            self.baseline_base = f"{self.baseline.url}{PACKAGES_PATH}/"
            print(f"baseline registry {self.args.baseline}, pid {self.baseline.pid}", flush=True)
        self.peer = None
        if not self.args.skip_peer:
            self.peer = self.start(peer.pypiserver(self.workdir, self.args.peer_server))
            print(f"pypiserver {peer.version()} on {self.args.peer_server}, pid {self.peer.pid}", flush=True)

    def _run(self, op: Operation, round_: int, into: Measurement) -> None:
        # Start with no dirty pages of earlier runs still being written back.
        os.sync()
        if self.drop_caches and not op.reads:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            with self.payload.open("rb") as f:  # the sender reads it from the cache, as before
                while f.read(MIB):
                    pass
        elif self.drop_caches and op.warm is not None:
            op.warm()
        before = cpu_seconds(op.server.pid) if op.server else 0.0
        seconds = op.run_once(round_)
        into.seconds.append(seconds)
        if op.server:
            into.server_cpu.append(cpu_seconds(op.server.pid) - before)
        print(f"  {op.label:<40}{self.size / seconds / MB:8.1f} MB/s ({seconds:.3f} s)", flush=True)

    def operations(self) -> list[Operation]:
        """Every timed transfer (those of ``--only``, if given), in the order each round runs them."""
        ops = self._all_operations()
        if self.args.only is not None:
            ops = [op for op in ops if op.key in self.args.only]
        return ops

    def _all_operations(self) -> list[Operation]:
        def download_url() -> str:  # the warm-up's package, uploaded once operations are listed
            return f"{self.registry_base}{self.registry_ids[0]}/download/"

        ops = [
            Operation("limits", "copy_sha256_fsync", "limit: copy + sha256 + fsync", self._copy_and_hash),
            Operation("limits", "curl_to_sink", "limit: curl -F to a discarding server", self._to_sink, reads=True),
            Operation("registry", "upload", "registry: upload (file)",
                      lambda round_: self._registry_upload(round_, self.registry_base, self.auth), self.registry),
            Operation("registry", "tus_upload", "registry: upload (tus, 8 MiB chunks)",
                      lambda round_: self._registry_tus(round_, self.registry_base, self.auth), self.registry),
        ]
        if self.baseline is not None:
            ops += [
                Operation("baseline", "upload", "baseline: upload (file)",
                          lambda round_: self._registry_upload(round_, self.baseline_base, self.baseline_auth),
                          self.baseline),
                Operation("baseline", "tus_upload", "baseline: upload (tus, 8 MiB chunks)",
                          lambda round_: self._registry_tus(round_, self.baseline_base, self.baseline_auth),
                          self.baseline),
            ]
        if self.peer is not None:
            ops.append(Operation("peer", "upload", "pypiserver: upload", self._peer_upload, self.peer))
        ops += [
            Operation("limits", "curl_o_sha256sum", "limit: curl -o + sha256sum", self._fetch_and_hash),
            Operation("registry", "link_upload", "registry: upload (link)", self._registry_link, self.registry),
            Operation("limits", "curl_static_download", "limit: curl from a static server",
                      lambda _: self._download(self.static_url, {}), reads=True),
            Operation("registry", "download", "registry: download", lambda _: self._download(download_url(), self.auth),
                      self.registry, reads=True, warm=lambda: self._warm(download_url(), self.auth)),
        ]
        if self.peer is not None:
            url = f"{self.peer.url}/packages/bench-0.0.0.tar.gz"
            ops.append(Operation("peer", "download", "pypiserver: download", lambda _: self._download(url, {}),
                                 self.peer, reads=True, warm=lambda: self._warm(url, {})))
        return ops

    def _warm(self, url: str, headers: dict[str, str]) -> None:
        """Download ``url`` once, untimed: its source is in the page cache again."""
        self._download(url, headers)

    def _warm_up(self) -> None:
        """One untimed upload to each server: first-request costs stay out of
        the numbers, and the downloads have a package from the start."""
        print("warming up ...", flush=True)
        self._registry_upload(-1, self.registry_base, self.auth)
        if self.baseline is not None:
            self._registry_upload(-1, self.baseline_base, self.baseline_auth)
        if self.peer is not None:
            self._peer_upload(-1)

    # -- the limits --

    def _copy_and_hash(self, _: int) -> float:
        target = self.workdir / "copy.bin"
        try:
            return copy_and_hash(self.payload, target)
        finally:
            target.unlink(missing_ok=True)

    def _to_sink(self, round_: int) -> float:
        return expect(run_curl(multipart_args(
            f"{self.sink.url}/", self.payload, "package", PAYLOAD_NAME, {"version": f"0.0.{round_}"})),
            (200,), "sink").seconds

    def _fetch_and_hash(self, _: int) -> float:
        fetched = self.workdir / "fetched.bin"
        started = time.perf_counter()
        try:
            expect(run_curl(get_args(self.static_url), output=fetched), (200,), "static fetch")
            digest = subprocess.run(["sha256sum", str(fetched)], capture_output=True, text=True, check=True)
            if digest.stdout.split()[0] != self.sha256:
                raise RuntimeError("curl -o fetched other bytes")
            return time.perf_counter() - started
        finally:
            fetched.unlink(missing_ok=True)

    def _download(self, url: str, headers: dict[str, str]) -> float:
        result = expect(run_curl(get_args(url, headers)), (200,), f"download {url}")
        if result.downloaded != self.size:
            raise RuntimeError(f"download {url}: {result.downloaded} bytes, expected {self.size}")
        return result.seconds

    # -- the registry --

    def _registry_server(self, command: list[str], name: str) -> tuple[ServerProcess, dict[str, str]]:
        """``command serve`` on a fresh config in ``workdir/name``, started; (it, a token's headers)."""
        root = self.workdir / name
        root.mkdir()
        config = root / "registry.toml"
        config.write_text(registry_config(root, self.size))
        created = subprocess.run([*command, "--config", str(config), "token", "create", "--operator", "bench"],
                                 capture_output=True, text=True, check=True, timeout=60)
        auth = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
        port = free_port()
        server = ServerProcess(name, [*command, "--config", str(config), "serve", "--port", str(port)],
                               port, root / "serve.log", ready_path="/healthz")
        return self.start(server), auth

    def _registry_upload(self, round_: int, base: str, auth: dict[str, str]) -> float:
        result = expect(run_curl(multipart_args(
            base, self.payload, "package", PAYLOAD_NAME, {"version": _version(1, round_)}, auth),
            output=self.workdir / "response.json"), (201,), "registry upload")
        self._check_record(result)
        if base == self.registry_base:
            self.registry_ids.append(result.json()["id"])
        return result.seconds

    def _registry_tus(self, round_: int, base: str, auth: dict[str, str]) -> float:
        seconds, outcome = tus_upload(f"{base}uploads/", self.payload, auth, TUS_CHUNK,
                                      {"filename": PAYLOAD_NAME, "version": _version(4, round_)})
        record = outcome.get("package") or {}
        if outcome.get("state") != "succeeded" or record.get("sha256_signature") != self.sha256:
            raise RuntimeError(f"tus upload: {outcome}")
        return seconds

    def _registry_link(self, round_: int) -> float:
        result = expect(run_curl(json_args(
            f"{self.registry_base}link/", {"package_url": self.static_url, "version": _version(2, round_)}, self.auth),
            output=self.workdir / "response.json"), (201,), "registry link upload")
        self._check_record(result)
        return result.seconds

    def _check_record(self, result: CurlResult) -> None:
        record = result.json()
        if record.get("sha256_signature") != self.sha256 or int(record.get("package_size", -1)) != self.size:
            raise RuntimeError(f"the registry stored other bytes: {record}")

    # -- the peer --

    def _peer_upload(self, round_: int) -> float:
        assert self.peer is not None
        version = _version(1, round_)
        return expect(run_curl(multipart_args(
            f"{self.peer.url}/", self.payload, "content", f"bench-{version}.tar.gz", peer.upload_fields(version)),
            output=self.workdir / "response.txt"), (200,), "pypiserver upload").seconds

    # -- latency under load --

    def _probe_during(self, server: ServerProcess, path: str, curl_args: list[str], what: str = "an upload") -> Latencies:
        """Probe ``path`` while one more upload (``curl_args``) runs; check that it succeeded."""
        os.sync()
        output = self.workdir / "probe-response.json"
        command = ["curl", "-sS", "-o", str(output), "-w", "%{http_code}", *curl_args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            latencies = probe_while_running(process, server.port, path)
        finally:
            stdout, stderr = process.communicate()
        if process.returncode != 0 or stdout.decode().strip() not in ("200", "201"):
            raise RuntimeError(f"upload during the {path} probe failed: {stdout!r} {stderr!r}")
        summary = latencies.summary()
        print(f"{server.name} GET {path} during {what}: max {summary['max_ms']} ms, "
              f"p99 {summary['p99_ms']} ms over {summary['probes']} probes", flush=True)
        return latencies


def _version(major: int, round_: int) -> str:
    """A distinct version per operation and round; ``0.0.0`` for the warm-up (round -1)."""
    return "0.0.0" if round_ < 0 else f"{major}.0.{round_}"


def registry_command() -> list[str]:
    """The ``registry`` CLI of the running virtualenv."""
    script = Path(sys.executable).parent / "registry"
    return [str(script)] if script.exists() else [sys.executable, "-m", "registry.cli"]


def registry_config(root: Path, size: int) -> str:
    """A config keeping everything under ``root``, fetching from loopback allowed."""
    limit = max(2 * 1024**3, 4 * size)
    return "\n".join([
        "[server]", 'host = "127.0.0.1"', "",
        "[database]", f"path = {json.dumps(str(root / 'registry.db'))}", "",
        "[storage]", 'backend = "filesystem"', "",
        "[storage.filesystem]", f"root = {json.dumps(str(root / 'packages'))}", "",
        "[origins]", 'enabled = ["http"]', "",
        "[origins.http]", "allow_private_networks = true", "read_timeout = 120", "total_timeout = 3600", "",
        "[limits]", f"max_package_size = {limit}", f"max_unpacked_size = {4 * limit}", "",
    ])


# -- the report --------------------------------------------------------------------

def summarize(bench: Benchmark, groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything measured, the comparisons and the targets, as JSON-ready data.
    With ``--only`` a row or target whose measurements were not taken is left
    out or reported as not measured."""
    limits: dict[str, Measurement] = groups["limits"]
    registry, baseline, peer_results = groups["registry"], groups.get("baseline"), groups.get("peer")
    upload_limits = [k for k in ("copy_sha256_fsync", "curl_to_sink") if k in limits]
    upload_limit_key = min(upload_limits, key=lambda k: limits[k].mbps) if upload_limits else None

    def row(operation: str, key: str, peer_key: str | None, limit_key: str | None) -> dict[str, Any] | None:
        if key not in registry:
            return None
        reg = registry[key]
        peer_m = peer_results.get(peer_key) if peer_results and peer_key else None
        limit = limits.get(limit_key) if limit_key else None
        return {
            "operation": operation,
            "registry_mb_per_s": round(reg.mbps, 1),
            "peer_mb_per_s": round(peer_m.mbps, 1) if peer_m else None,
            "limit_mb_per_s": round(limit.mbps, 1) if limit else None,
            "limit": limit_key if limit else None,
            "registry_over_peer": round(reg.mbps / peer_m.mbps, 2) if peer_m else None,
            "registry_over_limit": round(reg.mbps / limit.mbps, 3) if limit else None,
        }

    named = {
        "upload": row("upload (file)", "upload", "upload", upload_limit_key),
        "link": row("upload (link)", "link_upload", None, "curl_o_sha256sum"),
        "download": row("download", "download", "download", "curl_static_download"),
        "tus": row("upload (tus)", "tus_upload", None, upload_limit_key),
    }
    rows = [r for r in named.values() if r is not None]

    def field_of(name: str, key: str) -> Any:
        r = named[name]
        return r[key] if r else None

    health = registry["healthz_during_upload"].summary() if "healthz_during_upload" in registry else None
    targets = [
        target("upload >= 3x pypiserver", field_of("upload", "registry_over_peer"), TARGET_UPLOAD_VS_PEER, "x"),
        target("upload >= 50% of the raw limit", field_of("upload", "registry_over_limit"),
               TARGET_UPLOAD_VS_LIMIT, "%"),
        target("link upload >= 50% of curl -o + sha256sum", field_of("link", "registry_over_limit"),
               TARGET_LINK_VS_LIMIT, "%"),
        target("download >= 70% of curl from a static server", field_of("download", "registry_over_limit"),
               TARGET_DOWNLOAD_VS_LIMIT, "%"),
        target("tus upload (8 MiB chunks) >= 80% of the file upload", tus_ratio(registry),
               TARGET_TUS_VS_UPLOAD, "%"),
        target("peak RSS < 150 MB", registry["peak_rss_bytes"], TARGET_PEAK_RSS, "bytes", below=True),
        target("GET /healthz max latency during an upload < 100 ms",
               health["max_ms"] / 1000 if health and health["max_ms"] is not None else None,
               TARGET_HEALTHZ_MAX, "s", below=True),
    ]
    if baseline is not None:
        targets.append(target("baseline: tus upload (8 MiB chunks) >= 80% of its file upload", tus_ratio(baseline),
                              TARGET_TUS_VS_UPLOAD, "%"))

    def phases(data: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to_json() if isinstance(v, Measurement) else v.summary() if isinstance(v, Latencies) else v
                for k, v in data.items()}

    return {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "payload_bytes": bench.size,
            "payload_mib": bench.args.size_mib,
            "repeat": bench.repeat,
            "mb": "10^6 bytes",
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average_at_start": bench.load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "curl": subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0],
            "peer": f"{peer.version()} with --server {bench.args.peer_server}" if peer_results else None,
            "only": sorted(bench.args.only) if bench.args.only else None,
            "page_cache_dropped_before_writes": bench.drop_caches,
            "baseline": str(bench.args.baseline) if bench.args.baseline else None,
        },
        "comparisons": rows,
        "targets": targets,
        "limits": {k: v.to_json() for k, v in limits.items()},
        "upload_limit": upload_limit_key,
        "registry": phases(registry),
        "baseline": phases(baseline) if baseline else None,
        "peer": phases(peer_results) if peer_results else None,
    }


def tus_ratio(results: dict[str, Any]) -> float | None:
    """The tus upload's MB/s over the file upload's, when both were measured."""
    if "tus_upload" not in results or "upload" not in results:
        return None
    return float(results["tus_upload"].mbps / results["upload"].mbps)


def target(name: str, value: float | None, goal: float, unit: str, below: bool = False) -> dict[str, Any]:
    """One target: its measured value and whether it was met (None: not measured)."""
    met = None if value is None else (value < goal if below else value >= goal)
    return {"target": name, "value": value, "goal": goal, "unit": unit, "met": met}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _fmt(value: float | None, spec: str, suffix: str = "", width: int = 0) -> str:
    text = "-" if value is None else f"{value:{spec}}{suffix}"
    return f"{text:>{width}}"


def render(summary: dict[str, Any]) -> str:
    """The human-readable table."""
    meta = summary["meta"]
    lines = [
        (f"Source Package Registry benchmark: {meta['payload_bytes'] / MB:.1f} MB payload ({meta['payload_mib']} MiB "
         f"tar.gz), median of {meta['repeat']}, MB/s = 10^6 bytes/s"),
        f"{meta['cpu']}, {meta['cores']} cores, Python {meta['python']}; peer: {meta['peer'] or 'skipped'}",
        f"load average at start {meta['load_average_at_start'][0]:.2f}, at end {meta['load_average_at_end'][0]:.2f}",
        "page cache dropped before each transfer that writes (and the payload read back in): "
        + ("yes" if meta["page_cache_dropped_before_writes"] else "no"),
        "",
        f"{'operation':<16}{'registry':>10}{'pypiserver':>12}{'limit':>9}{'reg/peer':>10}{'reg/limit':>11}  limit is",
    ]
    for r in summary["comparisons"]:
        lines.append(
            f"{r['operation']:<16}{r['registry_mb_per_s']:>10.1f}{_fmt(r['peer_mb_per_s'], '.1f', width=12)}"
            f"{_fmt(r['limit_mb_per_s'], '.1f', width=9)}{_fmt(r['registry_over_peer'], '.2f', 'x', width=10)}"
            f"{_fmt(r['registry_over_limit'] and r['registry_over_limit'] * 100, '.0f', '%', width=11)}"
            f"  {LIMIT_NAMES.get(r['limit'], '-')}"
        )
    lines += ["", "raw limits (MB/s)"]
    for key, data in summary["limits"].items():
        lines.append(f"  {LIMIT_NAMES[key]:<40}{data['median_mb_per_s']:>8.1f}")
    reg = summary["registry"]
    if summary["baseline"]:
        lines += ["", f"baseline ({meta['baseline']}, same rounds; MB/s)"]
        for key, data in summary["baseline"].items():
            lines.append(f"  {key:<40}{data['median_mb_per_s']:>8.1f}  (registry {reg[key]['median_mb_per_s']:.1f})")
    rss = reg["rss_by_phase_bytes"]
    sampled = ", ".join(f"{name} {rss[key] / MB:.1f}" for name, key in
                        (("upload", "upload"), ("tus", "tus_upload"), ("link", "link_upload"), ("download", "download"))
                        if key in rss)
    lines += [
        "",
        "resources",
        f"  registry peak RSS (VmHWM)  {reg['peak_rss_bytes'] / MB:6.1f} MB  (sampled peak: {sampled})",
    ]
    if summary["peer"] and "peak_rss_bytes" in summary["peer"]:
        lines.append(f"  pypiserver peak RSS        {summary['peer']['peak_rss_bytes'] / MB:6.1f} MB")
    # CPU seconds the server spent per upload: unlike MB/s, barely moved by other
    # work on the machine, so the tus/file comparison survives a busy host.
    for name, results in (("registry", reg), ("baseline", summary["baseline"] or {})):
        cpu = {op: statistics.median(results[op]["server_cpu_seconds"]) for op in ("upload", "tus_upload")
               if results.get(op, {}).get("server_cpu_seconds")}
        if len(cpu) == 2:
            lines.append(f"  {name} CPU per upload{' ' * (13 - len(name))}file {cpu['upload']:.2f} s, "
                         f"tus {cpu['tus_upload']:.2f} s ({cpu['tus_upload'] / cpu['upload']:.2f}x; median, user + system)")
    probes = [(f"registry GET /healthz during a {kind} upload", reg[key])
              for kind, key in (("file", "healthz_during_upload"), ("link", "healthz_during_link_upload")) if key in reg]
    if summary["peer"] and "healthz_during_upload" in summary["peer"]:
        probes.append(("pypiserver GET /health during an upload", summary["peer"]["healthz_during_upload"]))
    for name, p in probes:
        lines.append(f"  {name:<44} max {_fmt(p['max_ms'], '.1f')} ms, p99 {_fmt(p['p99_ms'], '.1f')} ms, "
                     f"p50 {_fmt(p['p50_ms'], '.1f')} ms ({p['probes']} probes, {p['failures']} failed)")
    lines += ["", "targets"]
    for t in summary["targets"]:
        mark = {True: "met ", False: "MISS", None: "n/a "}[t["met"]]
        lines.append(f"  [{mark}] {t['target']:<52} {_target_value(t)}")
    return "\n".join(lines)


def _target_value(t: dict[str, Any]) -> str:
    value = t["value"]
    if value is None:
        return "not measured"
    return {"x": f"{value:.2f}x", "%": f"{value * 100:.0f}%", "bytes": f"{value / MB:.1f} MB",
            "s": f"{value * 1000:.1f} ms"}[t["unit"]]


LIMIT_NAMES = {
    "copy_sha256_fsync": "copy + sha256 + fsync (local)",
    "curl_to_sink": "curl -F to a discarding server",
    "curl_o_sha256sum": "curl -o + sha256sum (static server)",
    "curl_static_download": "curl from a static server",
}


# -- entry point ---------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="throughput",
                        choices=["throughput", "scale", "small-uploads", "cluster", "transfers", "startup"],
                        help="throughput: one big package (default); scale: pages, search and small"
                             " requests as a module grows (benchmarks/scale.py); small-uploads: only"
                             " the scale suite's 1 KiB uploads, --repeat rounds (alternating with"
                             " --baseline); cluster: --workers,"
                             " SQLite and PostgreSQL (benchmarks/cluster.py); transfers: 64 uploads"
                             " and 200 downloads in flight (benchmarks/transfers.py); startup: serve's"
                             " first answer against pypiserver's, 15 runs (benchmarks/startup.py, which"
                             " takes --repeat and --baseline itself)")
    parser.add_argument("--quick", action="store_true", help="cluster suite: smaller sizes, a run of a minute or two")
    parser.add_argument("--workers", type=int, default=1, help="registry serve --workers for --suite transfers")
    parser.add_argument("--size-mib", type=int, default=256, help="payload size in MiB (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median counts (default 3)")
    parser.add_argument("--skip-peer", action="store_true", help="do not install or run pypiserver")
    parser.add_argument("--peer-server", default="waitress", choices=["waitress", "wsgiref"],
                        help="the WSGI server pypiserver runs on (default waitress)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT})")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where to make the temporary folder")
    parser.add_argument("--only", type=lambda text: set(text.split(",")), default=None, metavar="KEYS",
                        help="throughput: run only these operations, comma-separated keys (upload, tus_upload,"
                             " link_upload, download, copy_sha256_fsync, curl_to_sink, curl_o_sha256sum,"
                             " curl_static_download), without the latency probes; e.g. upload,tus_upload")
    parser.add_argument("--baseline", type=Path, default=None, metavar="PATH",
                        help="another `registry` executable (another checkout's virtualenv) measured in the"
                             " same rounds (A/B): throughput, its file and tus uploads; small-uploads, its"
                             " 1 KiB uploads in alternating rounds")
    parser.add_argument("--drop-caches", action=argparse.BooleanOptionalAction, default=os.geteuid() == 0,
                        help="throughput: drop the page cache before each transfer that writes; small-uploads:"
                             " before each run (default: when root)")
    parser.add_argument("--scale-sizes", default=",".join(str(n) for n in scale.SIZES),
                        help="records per module the scale suite fills, comma-separated (default %(default)s)")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.repeat < 1:
        parser.error("--size-mib and --repeat must be at least 1")
    if args.drop_caches and os.geteuid() != 0:
        parser.error("--drop-caches needs root (it writes /proc/sys/vm/drop_caches)")
    if args.only is not None and not args.only <= OPERATION_KEYS:  # a misspelt key would measure nothing
        parser.error(f"--only: no such operation: {', '.join(sorted(args.only - OPERATION_KEYS))}")
    return args


@contextlib.contextmanager
def workspace(base: Path | None) -> Iterator[Path]:
    """A temporary folder, removed on exit."""
    path = Path(tempfile.mkdtemp(prefix="registry-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.suite == "scale":
        output = args.output if args.output != DEFAULT_OUTPUT else HERE / "results" / "scale.json"
        with workspace(args.tmpdir) as workdir:
            sizes = tuple(int(n) for n in args.scale_sizes.split(","))
            return scale.main(workdir, args.skip_peer, output, sizes)
    if args.suite == "small-uploads":
        output = args.output if args.output != DEFAULT_OUTPUT else HERE / "results" / "small_uploads.json"
        with workspace(args.tmpdir) as workdir:
            return scale.main_small_uploads(workdir, output, args.repeat, args.baseline, args.drop_caches)
    if args.suite == "cluster":
        import cluster

        output = args.output if args.output != DEFAULT_OUTPUT else HERE / "results" / "cluster.json"
        with workspace(args.tmpdir) as workdir:
            return cluster.main(workdir, args.skip_peer, output, quick=args.quick)
    if args.suite == "startup":
        import startup

        return startup.main(["--skip-peer"] if args.skip_peer else [])
    if args.suite == "transfers":
        output = args.output if args.output != DEFAULT_OUTPUT else HERE / "results" / "transfers.json"
        with workspace(args.tmpdir) as workdir:
            return transfers.main(workdir, output, args.workers)
    clients.require_curl()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: other work on this machine will skew the numbers", flush=True)
    if not args.skip_peer:
        peer.ensure_venv()
    with workspace(args.tmpdir) as workdir, contextlib.ExitStack() as stack:
        bench = Benchmark(args, workdir, stack)
        bench.make_payload()
        summary = summarize(bench, bench.run())
    print()
    print(render(summary))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
