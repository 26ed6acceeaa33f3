"""The clients: ``curl`` for every transfer, ``http.client`` for latency probes.

Every transfer is timed by the wall clock around the whole ``curl`` process,
for the registry, the peer and the limits alike, so process start-up (a few
milliseconds) weighs the same on each side of a ratio.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import LOOPBACK

DEV_NULL = Path("/dev/null")


def require_curl() -> str:
    """The path of ``curl``; exits with a message when it is missing."""
    path = shutil.which("curl")
    if path is None:
        raise SystemExit("the benchmark needs curl on PATH (apt-get install curl)")
    return path


@dataclass
class CurlResult:
    """One finished ``curl`` run."""

    seconds: float
    status: int
    downloaded: int
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def _headers(headers: Mapping[str, str]) -> list[str]:
    # "Expect:" stops curl from waiting for "100 Continue" before big bodies;
    # every server is sent the same request shape.
    args = ["-H", "Expect:"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    return args


def run_curl(args: list[str], output: Path = DEV_NULL, timeout: float = 1800) -> CurlResult:
    """Run ``curl ARGS`` writing the body to ``output``; time it; keep a small body.

    :raises RuntimeError: curl failed at the transport level.
    """
    command = ["curl", "-sS", "-o", str(output), "-w", "%{http_code} %{size_download}", *args]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"curl failed ({completed.returncode}): {completed.stderr.decode(errors='replace')}")
    status, downloaded = completed.stdout.decode().split()
    body = b""
    if output != DEV_NULL and output.stat().st_size <= 1024 * 1024:
        body = output.read_bytes()
    return CurlResult(seconds, int(status), int(downloaded), body)


def multipart_args(url: str, file: Path, file_field: str, file_name: str,
                   fields: Mapping[str, str], headers: Mapping[str, str] | None = None) -> list[str]:
    """``curl`` arguments POSTing ``fields`` and ``file`` as ``multipart/form-data``."""
    args = _headers(headers or {})
    for name, value in fields.items():
        args += ["--form-string", f"{name}={value}"]
    args += ["-F", f"{file_field}=@{file};filename={file_name};type=application/gzip", url]
    return args


def json_args(url: str, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> list[str]:
    """``curl`` arguments POSTing ``payload`` as JSON."""
    return [*_headers({"Content-Type": "application/json", **(headers or {})}), "--data-binary", json.dumps(payload), url]


def get_args(url: str, headers: Mapping[str, str] | None = None) -> list[str]:
    """``curl`` arguments for a plain GET."""
    return [*_headers(headers or {}), url]


@dataclass
class Latencies:
    """Round trips of a health probe, in seconds, and the probes that failed."""

    samples: list[float] = field(default_factory=list)
    failures: int = 0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.samples)

        def pct(p: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

        return {
            "probes": len(ordered),
            "failures": self.failures,
            "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else None,
            "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else None,
        }


def probe_while_running(process: subprocess.Popen[bytes], port: int, path: str,
                        interval: float = 0.01) -> Latencies:
    """GET ``path`` every ``interval`` seconds until ``process`` exits.

    Uses one keep-alive connection (reopened after an error), so each sample
    is the server's answer time plus loopback round trip, without a TCP
    handshake.
    """
    result = Latencies()
    connection: http.client.HTTPConnection | None = None
    while process.poll() is None:
        if connection is None:
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        started = time.perf_counter()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status == 200:
                result.samples.append(elapsed)
            else:
                result.failures += 1
        except (OSError, http.client.HTTPException):
            result.failures += 1
            connection.close()
            connection = None
        time.sleep(interval)
    if connection is not None:
        connection.close()
    return result
