"""Shared fixtures: a live registry subprocess, a local file server, unique app codes."""

from __future__ import annotations

import functools
import http.server
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis

from tests import pg
from tests.helpers import Api, RegistryProcess, base_config, start_registry
from tests.pg import PgServer

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


@pytest.fixture
def api(registry: RegistryProcess, token: str) -> Iterator[Api]:
    client = Api(registry.url, token)
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
