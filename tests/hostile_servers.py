"""Small misbehaving HTTP servers on loopback, for the fault and SSRF tests.

Each :class:`HostileServer` listens on ``127.0.0.1`` (and, when asked, on
``[::1]`` with the same port), counts every connection it accepts and hands
each request to the handler registered for its path. Handlers write raw bytes
to the socket, so they can lie about ``Content-Length``, trickle, stall or
redirect anywhere. Every wait is bounded and released by :meth:`close`, so a
test never hangs on a server it started.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

#: Longest any handler waits on its own (the release event cuts it short).
MAX_WAIT = 30.0


@dataclass
class Request:
    """What a handler gets: the request line, headers and the client socket."""

    method: str
    path: str
    headers: dict[str, str]
    conn: socket.socket
    server: HostileServer

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def wait(self, seconds: float = MAX_WAIT) -> bool:
        """Sleep until the server is closed or released; True if released."""
        return self.server.release.wait(min(seconds, MAX_WAIT))

    @property
    def stopping(self) -> bool:
        return self.server.release.is_set()


Handler = Callable[[Request], None]


def response_head(status: int = 200, headers: Mapping[str, str] | None = None, reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- handlers ---------------------------------------------------------------------

def serve(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Handler:
    """An honest answer with ``Content-Length``."""
    def handle(request: Request) -> None:
        request.send(response_head(status, {"Content-Length": str(len(body)), "Connection": "close",
                                            **(headers or {})}) + body)
    return handle


def redirect(location: str, status: int = 302) -> Handler:
    return serve(b"", status, {"Location": location})


def lying_length(body: bytes, declared: int) -> Handler:
    """Announce ``declared`` bytes, send ``body`` (shorter or longer), close."""
    def handle(request: Request) -> None:
        request.send(response_head(200, {"Content-Length": str(declared), "Connection": "close"}) + body)
    return handle


def declare_then_stall(declared: int) -> Handler:
    """Announce ``declared`` bytes, send none, wait until released."""
    def handle(request: Request) -> None:
        request.send(response_head(200, {"Content-Length": str(declared)}))
        request.wait()
    return handle


def trickle(interval: float = 0.2, declared: int = 100_000) -> Handler:
    """Announce a body, then send one byte every ``interval`` seconds, forever."""
    def handle(request: Request) -> None:
        request.send(response_head(200, {"Content-Length": str(declared)}))
        deadline = time.monotonic() + MAX_WAIT
        while time.monotonic() < deadline and not request.stopping:
            request.send(b"\x1f")
            request.wait(interval)
    return handle


def silent() -> Handler:
    """Read the request, never answer."""
    def handle(request: Request) -> None:
        request.wait()
    return handle


def chunked(total: int, chunk_size: int = 64 * 1024) -> Handler:
    """A chunked body of ``total`` bytes, no ``Content-Length``."""
    def handle(request: Request) -> None:
        request.send(response_head(200, {"Transfer-Encoding": "chunked", "Connection": "close"}))
        sent = 0
        block = b"\0" * chunk_size
        while sent < total and not request.stopping:
            piece = block[: min(chunk_size, total - sent)]
            request.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
        request.send(b"0\r\n\r\n")
    return handle


def half_then_wait(body: bytes, sent: threading.Event) -> Handler:
    """Announce ``body``, send its first half, signal ``sent``, wait until released."""
    def handle(request: Request) -> None:
        half = len(body) // 2
        request.send(response_head(200, {"Content-Length": str(len(body))}) + body[:half])
        sent.set()
        request.wait()
    return handle


# -- the server -------------------------------------------------------------------

@dataclass
class HostileServer:
    """A threaded raw-socket HTTP/1.1 server; one request per connection."""

    routes: dict[str, Handler] = field(default_factory=dict)
    ipv6: bool = False
    connections: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listeners = [socket.create_server(("127.0.0.1", 0))]
        self.port = int(self._listeners[0].getsockname()[1])
        if self.ipv6:
            with suppress(OSError):
                self._listeners.append(
                    socket.create_server(("::1", self.port), family=socket.AF_INET6, dualstack_ipv6=False)
                )
        for listener in self._listeners:
            listener.settimeout(0.1)
            self._spawn(self._accept_loop, listener)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def route(self, path: str, handler: Handler) -> str:
        """Serve ``path`` with ``handler``; return its URL."""
        self.routes[path] = handler
        return self.url(path)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self.release.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(MAX_WAIT)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                piece = conn.recv(4096)
                if not piece:
                    return
                data += piece
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, path, _ = ([*head[0].split(" "), "", "", ""])[:3]
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            with self._lock:
                self.requests.append((path, headers))
            handler = self.routes.get(path.split("?", 1)[0], serve(b"not found", 404))
            handler(Request(method, path, headers, conn, self))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.release.set()
        for listener in self._listeners:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
            listener.close()
        with self._lock:
            for conn in self._open:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)


@contextmanager
def hostile_server(ipv6: bool = False) -> Iterator[HostileServer]:
    server = HostileServer(ipv6=ipv6)
    try:
        yield server
    finally:
        server.close()


class FullBacklog:
    """A port whose accept queue is full: a new connection attempt gets no
    answer at all (the SYN is dropped), so the client's connect times out.

    ``ready`` is False when the kernel kept accepting (then the test skips).
    """

    def __init__(self, attempts: int = 16) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = int(self.listener.getsockname()[1])
        self.fillers: list[socket.socket] = []
        self.ready = False
        for _ in range(attempts):
            filler = socket.socket()
            filler.settimeout(0.3)
            self.fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                self.ready = True
                break

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.listener.close()
