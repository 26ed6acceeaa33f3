"""Helper servers for the limits, and running any server as a subprocess.

Run as a script, this module is one of two trivial servers:

- ``python servers.py sink --port N``: reads each request's body (by its
  ``Content-Length``) into one reused buffer and throws it away. What
  ``curl -F`` achieves against it is the fastest any HTTP upload can go here.
- ``python servers.py static --root DIR --port N``: serves the files of
  ``DIR`` with ``sendfile(2)``, the way nginx would, for the link upload's
  origin and the download limit.

Both listen on 127.0.0.1 only. :class:`ServerProcess` starts them (and the
registry, and pypiserver) as subprocesses and stops them again.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, Self

LOOPBACK = "127.0.0.1"
RECV_SIZE = 1024 * 1024


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# -- the sink -------------------------------------------------------------------

class _SinkHandler(socketserver.BaseRequestHandler):
    """One connection: read a request with a ``Content-Length`` body, discard it."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        buffer = bytearray(RECV_SIZE)
        view = memoryview(buffer)
        head = bytearray()
        while b"\r\n\r\n" not in head:
            n = sock.recv_into(view)
            if n == 0:
                return
            head += view[:n]
            if len(head) > 64 * 1024 and b"\r\n\r\n" not in head:
                return
        header, _, rest = bytes(head).partition(b"\r\n\r\n")
        fields = {}
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if not fields.get(b"content-length", b"").isdigit():
            sock.sendall(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if fields.get(b"expect", b"").lower() == b"100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        remaining = int(fields[b"content-length"]) - len(rest)
        while remaining > 0:
            n = sock.recv_into(view, min(RECV_SIZE, remaining))
            if n == 0:
                return
            remaining -= n
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


class _ThreadingTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


# -- the static file server -------------------------------------------------------

class _SendfileHandler(SimpleHTTPRequestHandler):
    """``http.server``'s file handler, sending bodies with ``sendfile(2)``."""

    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:  # type: ignore[override]
        outputfile.flush()
        self.connection.sendfile(source)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="trivial servers for the registry benchmark")
    parser.add_argument("kind", choices=["sink", "static"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.kind == "sink":
        with _ThreadingTCPServer((LOOPBACK, args.port), _SinkHandler) as sink:
            sink.serve_forever()
    else:
        root = str(args.root)

        class Handler(_SendfileHandler):
            def __init__(self, *a: object, **kw: object) -> None:
                super().__init__(*a, directory=root, **kw)  # type: ignore[arg-type]

        with ThreadingHTTPServer((LOOPBACK, args.port), Handler) as static:
            static.daemon_threads = True
            static.serve_forever()


# -- subprocesses -----------------------------------------------------------------

@dataclass
class ServerProcess:
    """A server run as a subprocess, ready once ``ready_path`` answers or the port opens.

    :param ready_path: an HTTP path that must answer 2xx/3xx/4xx; None: wait
        for the port to accept connections.
    """

    name: str
    argv: list[str]
    port: int
    log: Path
    ready_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60) -> ServerProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log.read_text(errors='replace')[-4000:]}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout:g} s:\n{self.log.read_text(errors='replace')[-4000:]}")

    def _answers(self) -> bool:
        try:
            if self.ready_path is None:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    return True
            connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
            try:
                connection.request("GET", self.ready_path)
                return connection.getresponse().status < 500
            finally:
                connection.close()
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the process (kill it after 15 s); idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def helper_server(kind: str, workdir: Path, root: Path | None = None) -> ServerProcess:
    """The sink or static server of this module, as a :class:`ServerProcess`."""
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), kind, "--port", str(port)]
    if root is not None:
        argv += ["--root", str(root)]
    return ServerProcess(kind, argv, port, workdir / f"{kind}.log")


# -- resident memory ----------------------------------------------------------------

def _status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), or 0."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size so far (``VmHWM``)."""
    return _status_kib(pid, "VmHWM") * 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class RssSampler:
    """Polls a process's ``VmRSS`` in a thread; :meth:`take` gives the peak since the last call."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _status_kib(self.pid, "VmRSS") * 1024
            with self._lock:
                self._peak = max(self._peak, rss)

    def take(self) -> int:
        """Peak ``VmRSS`` in bytes since the previous call (then reset)."""
        with self._lock:
            peak, self._peak = self._peak, _status_kib(self.pid, "VmRSS") * 1024
        return peak


if __name__ == "__main__":
    _serve()
