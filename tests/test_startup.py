"""Start-up: ``serve`` loads only what its configuration uses (issue 14).

Speed is measured in ``benchmarks/startup.py``; these tests pin the cause:
the libraries a default configuration (SQLite, filesystem storage) does not
use before a request needs them stay unloaded, and load when one does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FileServer
from tests.helpers import Api, RegistryProcess, app_desc, make_tar, to_toml
from tests.modules_plugin import REPORT_ENV

#: Imported by a plugin or a route only when a request uses them: S3 (boto3),
#: links over HTTP and webhooks (httpx, which brings rich along), migrations
#: (sqlite-utils), the web interface's templates (Jinja2), app_desc.yaml (PyYAML).
LAZY = {"boto3", "botocore", "httpx", "rich", "sqlite_utils", "jinja2", "yaml"}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def loaded_by(registry: RegistryProcess, report: Path) -> set[str]:
    """The top-level packages of the modules ``registry`` had loaded when it stopped."""
    registry.stop()
    return {name.split(".")[0] for name in json.loads(report.read_text())["modules"]}


def default_registry(root: Path, files_root: Path, workers: int = 1) -> tuple[RegistryProcess, Path]:
    """A registry on the default configuration (the built-in ``origins.enabled``,
    s3 included), reporting its modules; its database already migrated."""
    report = root / "modules.json"
    tables: dict[str, dict[str, Any]] = {
        "database": {"path": str(root / "registry.db")},
        "storage.filesystem": {"root": str(root / "packages")},
        "origins.http": {"allow_private_networks": True},
        "origins.file": {"allowed_roots": [str(files_root)]},
        "plugins": {"modules": ["tests.modules_plugin"]},
        "server": {"workers": workers},
    }
    root.mkdir(parents=True, exist_ok=True)
    config = root / "registry.toml"
    config.write_text(to_toml(tables))
    registry = RegistryProcess(config=config, log=root / "serve.log", env={REPORT_ENV: str(report), "PYTHONPATH": str(PROJECT_ROOT)})
    registry.cli("migrate")  # serve's usual start: an up-to-date database
    return registry, report


def test_default_configuration_serves_without_the_lazy_libraries(tmp_path: Path, file_server: FileServer) -> None:
    """Started, asked for its health, a listing and a download of a stored
    package, a default registry has loaded none of :data:`LAZY`."""
    registry, report = default_registry(tmp_path, file_server.root)
    token = registry.token()
    registry.start()
    try:
        api = Api(registry.url, token)
        assert httpx.get(f"{registry.url}/healthz").status_code == 200
        assert api.list("startup").status_code == 200
        # a package without app_desc.yaml (the version given): nothing to parse as YAML
        created = api.upload("startup", make_tar({"src/main.py": b"print(1)\n"}), version="1.0.0")
        assert created.status_code == 201, created.text
        assert api.download("startup", created.json()["id"]).status_code == 200
        api.close()
    finally:
        loaded = loaded_by(registry, report)
    assert "starlette" in loaded  # the report is the serving process's
    assert loaded & LAZY == set()


def test_lazy_libraries_load_when_a_request_uses_them(tmp_path: Path, file_server: FileServer) -> None:
    """A link fetched over HTTP, an app_desc.yaml and a page of the web
    interface load httpx, PyYAML and Jinja2 in the serving process, and work."""
    registry, report = default_registry(tmp_path, file_server.root)
    token = registry.token()
    registry.start()
    try:
        api = Api(registry.url, token)
        url = file_server.add("startup/linked.tar.gz", make_tar({"app_desc.yaml": app_desc("2.0.0")}))
        linked = api.link("startup", url)
        assert linked.status_code == 201, linked.text
        assert linked.json()["version"] == "2.0.0"  # read from app_desc.yaml
        page = httpx.get(f"{registry.url}/ui/login")
        assert page.status_code == 200 and "<form" in page.text
        api.close()
    finally:
        loaded = loaded_by(registry, report)
    assert {"httpx", "yaml", "jinja2"} <= loaded
    assert loaded & {"boto3", "botocore", "sqlite_utils"} == set()



@pytest.mark.parametrize("workers", [1, 2])
def test_the_collector_runs_again_once_serving(tmp_path: Path, file_server: FileServer, workers: int) -> None:
    """``serve`` pauses the cyclic garbage collector while it starts (nothing
    it makes then is garbage); every serving process has it running again,
    with what start-up made frozen, by the time it answers."""
    registry, report = default_registry(tmp_path, file_server.root, workers)
    registry.start()
    try:
        assert httpx.get(f"{registry.url}/healthz").status_code == 200
    finally:
        registry.stop()
    state = json.loads(report.read_text())
    assert state["gc_enabled"] is True
    assert state["gc_frozen"] > 10_000  # the modules, classes and app made at start-up
