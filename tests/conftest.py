"""Shared fixtures: a live registry subprocess, a local file server, an S3 server, unique app codes.

Fixtures more than one module needs live here, not in copies.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import schemathesis

from registry.service import Registry
from tests import pg
from tests.helpers import Api, RegistryProcess, base_config, start_registry, to_toml
from tests.pg import PgServer

if TYPE_CHECKING:
    from tests.test_storage_conformance import MotoServer

_codes = itertools.count(1)

# tus PATCH bodies (resumable uploads) are raw bytes under their own media type.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class FileServer:
    """A real HTTP server on loopback serving files from ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(QuietHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, name: str, data: bytes) -> str:
        """Serve ``data`` as ``name``; return its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.url}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    server = FileServer(tmp_path_factory.mktemp("served"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, file_server: FileServer) -> Iterator[RegistryProcess]:
    """One live ``registry serve`` shared by the session; tests use their own app codes."""
    root = tmp_path_factory.mktemp("registry")
    process = start_registry(root, base_config(root, files_root=file_server.root))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def token(registry: RegistryProcess) -> str:
    return registry.token("alice")


@dataclass
class InProcess:
    """The registry served by uvicorn on a thread of this process, with a token of operator ``alice``."""

    service: Registry
    url: str
    token: str
    root: Path


@pytest.fixture(scope="session")
def inprocess(tmp_path_factory: pytest.TempPathFactory, file_server: FileServer) -> Iterator[InProcess]:
    """The registry in this process, configured like the ``registry`` subprocess, started and stopped once:
    real HTTP on loopback, without a process to start."""
    import uvicorn

    from registry.app import create_app
    from registry.bootstrap import build_registry, load_settings

    root = tmp_path_factory.mktemp("inprocess")
    config = root / "registry.toml"
    config.write_text(to_toml(base_config(root, files_root=file_server.root)))
    service = build_registry(*load_settings(config))
    token = service.credentials.create_token("alice", [], False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process registry did not start"
        time.sleep(0.01)
    try:
        yield InProcess(service, f"http://127.0.0.1:{sock.getsockname()[1]}", token, root)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """A client of the package API with ``alice``'s token.

    In-process by default; a test that also uses the live ``registry``
    subprocess (its URL, files, CLI or log) gets that server's API instead, so
    both see the same data.
    """
    if "registry" in request.fixturenames:
        registry: RegistryProcess = request.getfixturevalue("registry")
        client = Api(registry.url, request.getfixturevalue("token"))
    else:
        local: InProcess = request.getfixturevalue("inprocess")
        client = Api(local.url, local.token)
    yield client
    client.close()


@pytest.fixture
def code() -> str:
    """An application code no other test uses."""
    return f"app-{next(_codes)}"


# -- PostgreSQL ------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the session: ``REGISTRY_TEST_POSTGRES_URL`` (an
    admin URL allowed to create databases), else a throwaway cluster, stopped
    and removed at the end; skipped when neither exists."""
    url = os.environ.get(pg.URL_ENV)
    if url:
        yield PgServer(url)
        return
    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl) and {pg.URL_ENV} is not set")
    cluster = pg.Cluster(bin_dir)
    try:
        cluster.start()
        yield PgServer(cluster.url, cluster)
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a fresh, empty database on :func:`pg_server`."""
    return pg_server.new_database()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the loop uvicorn serves on."""
    return "asyncio"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """A real S3 server (moto's) on loopback, per module."""
    from tests.test_storage_conformance import MotoServer

    server = MotoServer()
    yield server
    server.stop()
