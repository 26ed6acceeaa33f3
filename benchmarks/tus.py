"""A lean tus 1.0.0 upload for the benchmark: raw HTTP/1.1 on one kept-alive
connection, one PATCH per chunk, no per-chunk checksum (tus clients send none
by default), so the number measures the server rather than the client.

The file upload it is compared with is sent by curl, a C program that streams
the file with a few system calls per megabyte. This client does about as
little: each PATCH is its head in one ``send`` and its body handed to the
kernel with ``os.sendfile`` straight from the file, and the answer is parsed
from one ``recv``. An httpx client spent 1-3 ms of Python between one PATCH's
answer and the next PATCH's head on the shared 2-core VM, CPU taken from the
server it measures.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TUS = {"Tus-Resumable": "1.0.0"}
#: Largest answer head read; the registry's are a few hundred bytes.
MAX_HEAD = 64 * 1024


def _metadata(values: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


class Connection:
    """One kept-alive HTTP/1.1 connection to ``host:port`` (no TLS, no chunked answers)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host = f"{host}:{port}"
        self.headers = headers
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, target: str, headers: dict[str, str], body: tuple[int, int, int] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        """Send one request, ``body`` as (fd, offset, length) of a file; (status, headers, body) of the answer."""
        length = body[2] if body is not None else 0
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {length}",
                 *(f"{k}: {v}" for k, v in {**self.headers, **headers}.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body is not None:
            fd, offset, remaining = body
            while remaining > 0:
                sent = os.sendfile(self.sock.fileno(), fd, offset, remaining)
                if sent == 0:
                    raise RuntimeError(f"the payload ended at {offset}, before {offset + remaining}")
                offset += sent
                remaining -= sent
        return self._answer()

    def _answer(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(MAX_HEAD)
            if not data:
                raise RuntimeError("the server closed the connection before answering")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        size = int(headers.get("content-length", "0"))
        while len(self.buffer) < size:
            data = self.sock.recv(max(MAX_HEAD, size - len(self.buffer)))
            if not data:
                raise RuntimeError("the server closed the connection inside an answer")
            self.buffer += data
        content, self.buffer = self.buffer[:size], self.buffer[size:]
        return int(status_line.split(" ", 2)[1]), headers, content


def tus_upload(uploads_url: str, path: Path, headers: dict[str, str], chunk_size: int,
               metadata: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Upload ``path`` in ``chunk_size`` PATCHes; (seconds from creation to the
    completing answer, the upload's outcome ``{"state","package","error"}``)."""
    size = path.stat().st_size
    url = urlsplit(uploads_url)
    assert url.scheme == "http" and url.hostname and url.port, uploads_url
    connection = Connection(url.hostname, url.port, {**headers, **TUS})
    try:
        with path.open("rb") as f:
            started = time.perf_counter()
            status, answer, content = connection.request("POST", url.path, {
                "Upload-Length": str(size), "Upload-Metadata": _metadata(metadata)})
            if status != 201:
                raise RuntimeError(f"tus creation: HTTP {status}: {content[:300]!r}")
            target = urlsplit(answer["location"]).path
            offset = 0
            while offset < size:
                length = min(chunk_size, size - offset)
                status, answer, content = connection.request("PATCH", target, {
                    "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
                    (f.fileno(), offset, length))
                if status != 204:
                    raise RuntimeError(f"tus PATCH at {offset}: HTTP {status}: {content[:300]!r}")
                # A PATCH the server did not take whole fails the run: sent
                # again it would be timed as new bytes (or loop, answered 0).
                taken = answer.get("upload-offset")
                if taken != str(offset + length):
                    raise RuntimeError(f"tus PATCH at {offset} of {length} bytes: answered Upload-Offset {taken}")
                offset += length
            seconds = time.perf_counter() - started
        status, _, content = connection.request("GET", target, {})
        outcome: dict[str, Any] = json.loads(content)
    finally:
        connection.close()
    return seconds, outcome
