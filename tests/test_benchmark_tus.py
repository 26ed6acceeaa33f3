"""The benchmark's tus client (``benchmarks/tus.py``) fails the run on a
PATCH the server did not take whole: a short or stalled PATCH must never
count as bytes sent, nor loop. Against a real local HTTP server that takes
a PATCH's body and answers a smaller ``Upload-Offset``."""

from __future__ import annotations

import importlib.util
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# benchmarks/ is not a package (its scripts import each other by name): load the one file.
_spec = importlib.util.spec_from_file_location("benchmark_tus", Path(__file__).resolve().parents[1] / "benchmarks/tus.py")
assert _spec is not None and _spec.loader is not None
bench_tus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_tus)


class ShortPatches(socketserver.StreamRequestHandler):
    """Creates an upload; takes each PATCH's body whole but answers an offset of 0."""

    def handle(self) -> None:
        while head := self._head():
            method, length = head
            self.rfile.read(length)
            if method == "POST":
                self._answer("201 Created", "Location: /uploads/1")
            else:
                self._answer("204 No Content", "Upload-Offset: 0")

    def _head(self) -> tuple[str, int] | None:
        request = self.rfile.readline().decode("latin-1")
        if not request:
            return None
        length = 0
        while (line := self.rfile.readline().decode("latin-1").strip()):
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return request.split()[0], length

    def _answer(self, status: str, header: str) -> None:
        self.wfile.write(f"HTTP/1.1 {status}\r\n{header}\r\nContent-Length: 0\r\n\r\n".encode())


@pytest.fixture()
def short_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), ShortPatches)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_patch_answered_with_a_short_offset_fails_the_run(short_server: int, tmp_path: Path) -> None:
    payload = tmp_path / "p.tar.gz"
    payload.write_bytes(b"x" * 3000)
    failure: list[RuntimeError] = []

    def upload() -> None:
        try:
            bench_tus.tus_upload(f"http://127.0.0.1:{short_server}/uploads/", payload, {}, 1000, {"filename": "p.tar.gz"})
        except RuntimeError as exc:  # what the client raises on a PATCH not taken whole
            failure.append(exc)

    client = threading.Thread(target=upload, daemon=True)
    client.start()
    client.join(timeout=30)  # ends a hang, times nothing: the client answers at once either way
    assert not client.is_alive(), "the client kept sending PATCHes the server did not take"
    assert len(failure) == 1 and "Upload-Offset 0" in str(failure[0]), failure
