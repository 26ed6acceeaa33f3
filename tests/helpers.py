"""Test helpers: config files, archives, a running registry, an API client."""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PACKAGES = "/bkapps/applications/{code}/modules/{module}/source_package"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Dotted table name -> keys, e.g. {"origins.http": {"allow_private_networks": True}}."""
    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append("")
    return "\n".join(lines)


def merge(base: dict[str, dict[str, Any]], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    result = {table: dict(keys) for table, keys in base.items()}
    for table, keys in extra.items():
        result.setdefault(table, {}).update(keys)
    return result


def base_config(root: Path, files_root: Path | None = None) -> dict[str, dict[str, Any]]:
    """A config keeping everything under ``root``, fetching from loopback allowed."""
    return {
        "database": {"path": str(root / "registry.db")},
        "storage": {"backend": "filesystem"},
        "storage.filesystem": {"root": str(root / "packages")},
        "origins": {"enabled": ["http", "file"]},
        "origins.http": {"allow_private_networks": True, "connect_timeout": 5, "read_timeout": 5, "total_timeout": 30},
        "origins.file": {"allowed_roots": [str(files_root)] if files_root else []},
    }


# -- archives -----------------------------------------------------------------

def app_desc(version: str, spec: int = 3) -> bytes:
    if spec == 3:
        return f"specVersion: 3\nappVersion: {version}\nmodules:\n  - name: default\n".encode()
    return f"spec_version: 2\napp_version: {version}\napp_code: demo\n".encode()


def make_tar(files: Mapping[str, bytes], compression: str = "gz") -> bytes:
    """A tar archive; the same files always give the same bytes."""
    buffer = io.BytesIO()
    mode = f"w:{compression}" if compression not in ("", "gz") else "w"
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    if compression == "gz":
        # tarfile's gzip header carries the current time; a fixed one keeps
        # package() deterministic across a second boundary.
        return gzip.compress(buffer.getvalue(), mtime=0)
    return buffer.getvalue()


def make_zip(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def package(version: str | None = None, *, salt: str = "", spec: int = 3, fmt: str = "tar.gz") -> bytes:
    """A small valid package; ``salt`` changes its bytes, ``version`` goes into app_desc.yaml."""
    files: dict[str, bytes] = {"src/main.py": f"print('hello {salt}')\n".encode()}
    if version is not None:
        files["app_desc.yaml"] = app_desc(version, spec)
    if fmt == "zip":
        return make_zip(files)
    compression = {"tar.gz": "gz", "tar.bz2": "bz2", "tar.xz": "xz", "tar": ""}[fmt]
    return make_tar(files, compression)


# -- a registry server as a subprocess -------------------------------------------

def registry_command() -> list[str]:
    script = Path(sys.executable).parent / "registry"
    return [str(script)] if script.exists() else [sys.executable, "-m", "registry.cli"]


@dataclass
class RegistryProcess:
    """``registry serve`` running in a subprocess on a free loopback port."""

    config: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*registry_command(), "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=60, env={**os.environ, **self.env}, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"registry {' '.join(args)} failed: {result.stderr}")
        return result

    def token(self, operator: str = "alice", apps: tuple[str, ...] = (), read_only: bool = False) -> str:
        args = ["token", "create", "--operator", operator]
        for app in apps:
            args += ["--app", app]
        if read_only:
            args.append("--read-only")
        return self.cli(*args).stdout.strip().splitlines()[-1]

    def start(self) -> RegistryProcess:
        self.port = free_port()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*registry_command(), "--config", str(self.config), "serve", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"registry exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"registry did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_registry(root: Path, tables: Mapping[str, Mapping[str, Any]], env: Mapping[str, str] | None = None) -> RegistryProcess:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "registry.toml"
    config.write_text(to_toml(tables))
    return RegistryProcess(config=config, log=root / "serve.log", env=dict(env or {})).start()


# -- the app in-process ------------------------------------------------------------

@asynccontextmanager
async def inprocess_registry(root: Path, tables: Mapping[str, Mapping[str, Any]], operator: str,
                             extra_plugins: Iterable[object] = ()) -> AsyncIterator[httpx.AsyncClient]:
    """The ASGI app started in this process, behind a client holding a token of ``operator``."""
    from registry.app import create_app
    from registry.bootstrap import build_registry, load_settings

    config = root / "registry.toml"
    config.write_text(to_toml(tables))
    settings, pm = load_settings(config, extra_plugins=extra_plugins)
    service = build_registry(settings, pm)
    token = service.credentials.create_token(operator, [], False)
    await service.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)),
                                     base_url="http://registry",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            yield client
    finally:
        await service.shutdown()


# -- an API client ----------------------------------------------------------------

class Api:
    """The package routes of one registry, with one credential."""

    def __init__(self, base_url: str, token: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=base_url, headers=all_headers, timeout=60)

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def path(code: str, module: str = "default", suffix: str = "", prefix: str = "") -> str:
        return prefix + PACKAGES.format(code=code, module=module) + "/" + suffix

    def link(self, code: str, url: str, module: str = "default", **fields: Any) -> httpx.Response:
        return self.http.post(self.path(code, module, "link/"), json={"package_url": url, **fields})

    def upload(self, code: str, data: bytes, module: str = "default", filename: str = "demo.tar.gz",
               **fields: Any) -> httpx.Response:
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        return self.http.post(self.path(code, module), files={"package": (filename, data)}, data=form)

    def list(self, code: str, module: str = "default", **params: Any) -> httpx.Response:
        return self.http.get(self.path(code, module), params=params)

    def get(self, code: str, package_id: int, module: str = "default") -> httpx.Response:
        return self.http.get(self.path(code, module, f"{package_id}/"))

    def download(self, code: str, package_id: int, module: str = "default", **headers: str) -> httpx.Response:
        return self.http.get(self.path(code, module, f"{package_id}/download/"), headers=headers)

    def delete(self, code: str, package_id: int, module: str = "default") -> httpx.Response:
        return self.http.delete(self.path(code, module, f"{package_id}/"))

    def restore(self, code: str, package_id: int, module: str = "default") -> httpx.Response:
        return self.http.post(self.path(code, module, f"{package_id}/restore/"))


def staged_files(staging: Path) -> list[Path]:
    """The upload files in a staging folder, in every process's own subfolder
    (see ``registry.staging_folders``); lock files and folders left out."""
    if not staging.is_dir():
        return []
    return sorted(p for p in staging.rglob("*") if p.is_file() and p.name != ".lock")


def blob_files(packages_root: Path) -> Iterator[Path]:
    """Every blob file the filesystem storage holds (staging excluded)."""
    for path in packages_root.rglob("*"):
        if path.is_file() and ".staging" not in path.relative_to(packages_root).parts:
            yield path


def wait_for(check: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy and return that; fail
    naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def run_python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child Python at the project's root, its output captured.

    For checks that a hostile input is handled in bounded time or memory: a
    regression then ends in a timeout (``subprocess.TimeoutExpired``) or a
    failed child instead of a stuck or exhausted test run.
    """
    return subprocess.run([sys.executable, "-c", script, *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parent.parent)
