"""The client commands (push, push-link, ls, pull), run as subprocesses against a live registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from registry import __version__ as registry_version
from registry.client import ApiError, ChecksumError, RegistryClient
from tests.conftest import FileServer
from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    blob_files,
    free_port,
    merge,
    package,
    registry_command,
    start_registry,
)

CLIENT_ENV = ("REGISTRY_URL", "REGISTRY_TOKEN", "REGISTRY_CONFIG")


def run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``registry ARGS`` with no registry variables inherited from the test's environment."""
    clean = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    return subprocess.run([*registry_command(), *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})}, check=False)


def connection(registry: RegistryProcess, token: str) -> list[str]:
    return ["--url", registry.url, "--token", token]


def write_package(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_push_ls_pull_round_trip(registry: RegistryProcess, token: str, code: str, tmp_path: Path) -> None:
    data = package(salt=code)
    source = write_package(tmp_path, "demo.tar.gz", data)
    digest = hashlib.sha256(data).hexdigest()

    pushed = run("push", str(source), "--app", code, "--module", "default", "--version", "1.0.0",
                 *connection(registry, token))
    assert pushed.returncode == 0, pushed.stderr
    record = json.loads(pushed.stdout)
    assert record["sha256_signature"] == digest
    assert record["package_size"] == str(len(data))
    assert record["package_name"] == "demo:1.0.0"

    listed = run("ls", "--app", code, "--module", "default", *connection(registry, token))
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "VERSION", "PACKAGE"]
    assert row.split()[:3] == [str(record["id"]), "1.0.0", "demo:1.0.0"]
    assert digest in row  # off a terminal the full digest is printed

    as_json = run("ls", "--app", code, "--module", "default", "--json", *connection(registry, token))
    assert json.loads(as_json.stdout) == [record]

    out = tmp_path / "out" / "pulled.tar.gz"
    out.parent.mkdir()
    pulled = run("pull", str(record["id"]), "--app", code, "--module", "default", "-o", str(out),
                 *connection(registry, token))
    assert pulled.returncode == 0, pulled.stderr
    assert out.read_bytes() == data
    assert f"sha256 {digest} verified" in pulled.stdout
    assert [p.name for p in out.parent.iterdir()] == ["pulled.tar.gz"]


def test_url_and_token_from_environment_version_from_app_desc(
    registry: RegistryProcess, token: str, code: str, tmp_path: Path
) -> None:
    source = write_package(tmp_path, "app.tar.gz", package("2.3.4", salt=code))
    env = {"REGISTRY_URL": registry.url, "REGISTRY_TOKEN": token}
    pushed = run("push", str(source), "--app", code, "--module", "web", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["version"] == "2.3.4"
    listed = run("ls", "--app", code, "--module", "web", "--json", env=env)
    assert [r["version"] for r in json.loads(listed.stdout)] == ["2.3.4"]


def test_push_link(registry: RegistryProcess, token: str, code: str, file_server: FileServer) -> None:
    data = package(salt=code)
    url = file_server.add(f"{code}/generic/example.tar.gz", data)
    pushed = run("push-link", url, "--app", code, "--module", "default", "--version", "0.0.5",
                 *connection(registry, token))
    assert pushed.returncode == 0, pushed.stderr
    record = json.loads(pushed.stdout)
    assert record["package_name"] == "example:0.0.5"
    assert record["sha256_signature"] == hashlib.sha256(data).hexdigest()


def test_conflict_prints_code_and_english_detail(registry: RegistryProcess, token: str, code: str,
                                                 tmp_path: Path) -> None:
    first = write_package(tmp_path, "a.tar.gz", package(salt=code + "a"))
    second = write_package(tmp_path, "b.tar.gz", package(salt=code + "b"))
    args = ["--app", code, "--module", "default", "--version", "1.0.0", *connection(registry, token)]
    assert run("push", str(first), *args).returncode == 0

    conflict = run("push", str(second), *args)
    assert conflict.returncode == 1
    assert conflict.stdout == ""
    assert "error: PACKAGE_ALREADY_EXISTS: Source package already exists" in conflict.stderr
    assert "pass --overwrite to replace it" in conflict.stderr
    assert f"it holds sha256 {hashlib.sha256(first.read_bytes()).hexdigest()}" in conflict.stderr

    overwritten = run("push", str(second), *args, "--overwrite")
    assert overwritten.returncode == 0, overwritten.stderr
    assert json.loads(overwritten.stdout)["sha256_signature"] == hashlib.sha256(second.read_bytes()).hexdigest()


def test_bad_token(registry: RegistryProcess, code: str) -> None:
    result = run("ls", "--app", code, "--module", "default", "--url", registry.url, "--token", "spr_not-a-token")
    assert result.returncode == 1
    assert "error: UNAUTHENTICATED: Not authenticated" in result.stderr


def test_pull_of_unknown_id_writes_nothing(registry: RegistryProcess, token: str, code: str, tmp_path: Path) -> None:
    out = tmp_path / "missing.tar.gz"
    result = run("pull", "999999", "--app", code, "--module", "default", "-o", str(out), *connection(registry, token))
    assert result.returncode == 1
    assert "error: PACKAGE_NOT_FOUND" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(code: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run("ls", "--app", code, "--module", "default", "--url", url, "--token", "t")
    assert result.returncode == 1
    assert f"cannot connect to {url}/" in result.stderr


@pytest.mark.parametrize("args", [
    ["ls", "--app", "a", "--module", "default"],  # no URL anywhere
    ["ls", "--module", "default", "--url", "http://127.0.0.1:9"],  # no --app
    ["ls", "--app", "a", "--module", "default", "--url", "ftp://host"],
    ["push", "/nonexistent/pkg.tar.gz", "--app", "a", "--module", "default", "--url", "http://127.0.0.1:9"],
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, Path, str]]:
    """A registry of this module's own (its blobs get damaged), taking packages up to 100 kB:
    the server, its packages folder and a token."""
    root = tmp_path_factory.mktemp("small-registry")
    server = start_registry(root, merge(base_config(root), {"limits": {"max_package_size": 100_000}}))
    try:
        yield server, root / "packages", server.token()
    finally:
        server.stop()


def test_pull_refuses_bytes_that_differ_from_the_checksum(small_registry: tuple[RegistryProcess, Path, str],
                                                          tmp_path: Path) -> None:
    """A blob damaged on disk is served with the record's checksum: pull must notice."""
    server, packages, token = small_registry
    data = package(salt="damaged")
    source = write_package(tmp_path, "demo.tar.gz", data)
    pushed = run("push", str(source), "--app", "damaged", "--module", "default", "--version", "1.0",
                 "--url", server.url, "--token", token)
    assert pushed.returncode == 0, pushed.stderr
    [blob] = [p for p in blob_files(packages / "damaged") if p.read_bytes() == data]
    blob.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # same size, other bytes

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pulled.tar.gz"
    result = run("pull", str(json.loads(pushed.stdout)["id"]), "--app", "damaged", "--module", "default",
                 "-o", str(out), "--url", server.url, "--token", token)
    assert result.returncode == 1
    assert "sha256 mismatch" in result.stderr
    assert list(out_dir.iterdir()) == []  # neither the file nor its temporary


def test_push_of_a_file_past_the_limit(small_registry: tuple[RegistryProcess, Path, str], tmp_path: Path) -> None:
    """The registry answers before reading the body; the client still shows its error."""
    server, _, token = small_registry
    big = tmp_path / "big.tar.gz"
    with big.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
    result = run("push", str(big), "--app", "big", "--module", "default", "--version", "1.0",
                 "--url", server.url, "--token", token)
    assert result.returncode == 1
    assert "error: PACKAGE_TOO_LARGE: Source package too large" in result.stderr


# -- the client library, in process ------------------------------------------------------


def test_push_streams_the_file_and_sends_its_sha256(tmp_path: Path) -> None:
    data = package(salt="in-process")
    source = write_package(tmp_path, "demo.tar.gz", data)
    digest = hashlib.sha256(data).hexdigest()
    sent: list[httpx.Request] = []
    chunks: list[bytes] = []

    class Capture(httpx.BaseTransport):
        """Reads the request body piece by piece, as a network transport would."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request)
            chunks.extend(request.stream)  # type: ignore[arg-type]
            return httpx.Response(201, json={"id": 1, "version": "1.0", "sha256_signature": digest})

    with RegistryClient("http://registry.test/api/bkpaas3/stag", "tok", transport=Capture()) as client:
        progress: list[tuple[int, int | None]] = []
        result = client.push(source, "demo", "default", version="1.0", progress=lambda d, t: progress.append((d, t)))
    assert result.created
    [request] = sent
    assert request.url.path == "/api/bkpaas3/stag/bkapps/applications/demo/modules/default/source_package/"
    assert not isinstance(request.stream, httpx.ByteStream)  # a stream over the file, not a bytes body
    assert request.headers["authorization"] == "Bearer tok"
    assert request.headers["accept-language"] == "en"
    body = b"".join(chunks)
    assert request.headers["content-length"] == str(len(body))
    assert b'name="sha256"\r\n\r\n' + digest.encode() in body
    assert b'name="package"; filename="demo.tar.gz"' in body
    assert data in body
    assert progress[-1] == (len(data), len(data))


def test_push_refuses_a_record_with_another_digest(tmp_path: Path) -> None:
    source = write_package(tmp_path, "demo.tar.gz", package(salt="other"))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": 1, "sha256_signature": "0" * 64})

    with (
        RegistryClient("http://registry.test", None, transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ChecksumError),
    ):
        client.push(source, "demo", "default", version="1.0")


def test_error_without_the_registry_body(tmp_path: Path) -> None:
    """A proxy's HTML error page gives a one-line message, not the page."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html><body>Bad   Gateway</body></html>")

    with (
        RegistryClient("http://registry.test", None, transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.list("demo", "default")
    assert str(caught.value) == "HTTP 502: Bad Gateway (from http://registry.test/, not in the registry's error format)"


def test_list_follows_pages(registry: RegistryProcess, token: str, code: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api(registry.url, token)
    try:
        for n in range(3):
            assert api.upload(code, package(salt=f"{code}{n}"), version=f"1.{n}").status_code == 201
    finally:
        api.close()
    monkeypatch.setattr("registry.client.LIST_PAGE_SIZE", 2)
    with RegistryClient(registry.url, token) as client:
        records = client.list(code, "default")
    assert [r["version"] for r in records] == ["1.2", "1.1", "1.0"]


# -- what push says, references by version, rm and restore ----------------------------------


def test_push_says_what_happened(registry: RegistryProcess, token: str, code: str, tmp_path: Path) -> None:
    first = write_package(tmp_path, "a.tar.gz", package(salt=code + "a"))
    second = write_package(tmp_path, "b.tar.gz", package(salt=code + "b"))
    args = ["--app", code, "--version", "1.0.0", *connection(registry, token)]  # --module defaults to default

    def push(path: Path, *extra: str) -> str:
        result = run("push", str(path), *args, *extra)
        assert result.returncode == 0, result.stderr
        return result.stderr

    assert f"{code}/default version 1.0.0: created, id " in push(first)
    assert "identical to the stored bytes; nothing changed" in push(first)
    assert "overwritten (the version now holds these bytes)" in push(second, "--overwrite")
    assert run("rm", "1.0.0", *args[:1], code, *connection(registry, token)).returncode == 0
    assert "revived (a deleted version stored again)" in push(first)


def test_pull_rm_restore_by_version_and_latest(registry: RegistryProcess, token: str, code: str,
                                               tmp_path: Path) -> None:
    old, new = package(salt=code + "old"), package(salt=code + "new")
    args = ["--app", code, *connection(registry, token)]
    for name, data, version in (("demo-1.tar.gz", old, "1.0"), ("demo-2.tar.gz", new, "2.0")):
        pushed = run("push", str(write_package(tmp_path, name, data)), "--version", version, *args)
        assert pushed.returncode == 0, pushed.stderr
    out = tmp_path / "out"
    out.mkdir()

    def pull(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*registry_command(), "pull", *extra, *args], capture_output=True, text=True,
                              timeout=60, cwd=out, env={k: v for k, v in os.environ.items() if k not in CLIENT_ENV}, check=False)

    latest = pull("latest")  # no -o: the package's file name, in the current folder
    assert latest.returncode == 0, latest.stderr
    assert (out / "demo-2.tar.gz").read_bytes() == new
    by_version = pull("1.0", "-o", str(out / "old.tar.gz"))
    assert by_version.returncode == 0, by_version.stderr
    assert (out / "old.tar.gz").read_bytes() == old

    removed = run("rm", "2.0", *args)
    assert removed.returncode == 0, removed.stderr
    assert f"deleted {code}/default version 2.0" in removed.stdout
    assert pull("latest", "-o", str(out / "now-latest.tar.gz")).returncode == 0
    assert (out / "now-latest.tar.gz").read_bytes() == old  # the deleted one is no longer latest
    missing = run("rm", "2.0", *args)
    assert missing.returncode == 1 and "PACKAGE_NOT_FOUND" in missing.stderr

    restored = run("restore", "2.0", *args)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["is_deleted"] is False
    assert pull("latest", "-o", str(out / "latest-again.tar.gz")).returncode == 0
    assert (out / "latest-again.tar.gz").read_bytes() == new


def test_a_server_that_is_not_a_registry(file_server: FileServer, code: str) -> None:
    """A wrong --url (here a plain web server's HTML 404) is named as such, without its page."""
    result = run("ls", "--app", code, "--url", file_server.url, "--token", "t")
    assert result.returncode == 1
    assert f"error: not a registry at {file_server.url}/: it answered HTTP 404 with text/html" in result.stderr
    assert "<" not in result.stderr


def test_apps_and_modules_listings(tmp_path: Path) -> None:
    """The listings follow the pages of ``/bkapps/applications/`` and ``…/{code}/modules/``."""
    apps = [{"code": f"app{n}", "modules": 1, "packages": n, "last_uploaded": "2026-01-01 00:00:00"}
            for n in range(3)]

    def handler(request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), 2
        if request.url.path == "/bkapps/applications/":
            return httpx.Response(200, json={"count": 3, "results": apps[offset:offset + limit]})
        assert request.url.path == "/bkapps/applications/app1/modules/"
        return httpx.Response(200, json={"count": 1, "results": [{"name": "default", "packages": 1}]})

    with RegistryClient("http://registry.test", None, transport=httpx.MockTransport(handler)) as client:
        assert client.applications() == apps
        assert client.modules("app1") == [{"name": "default", "packages": 1}]


def test_version_flag() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"registry {registry_version}"


# httpx's package imports its own command line (rich, click) when those are
# installed, so a command that talks HTTP loads rich whatever the registry does.
@pytest.mark.parametrize(("args", "heavy"), [
    (["--version"], ("boto3", "botocore", "uvicorn", "starlette", "rich", "sqlite_utils", "registry.service", "httpx",
                     "registry.store", "registry.copy", "yaml")),
    (["ls", "--app", "a", "--url", "http://127.0.0.1:9", "--token", "t"],
     ("boto3", "botocore", "uvicorn", "starlette", "sqlite_utils", "registry.service")),
])
def test_client_commands_import_no_server_stack(args: list[str], heavy: tuple[str, ...]) -> None:
    """``--version`` and client commands load neither boto3 nor the server stack."""
    script = (
        "import sys\n"
        "from registry.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = {heavy!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
