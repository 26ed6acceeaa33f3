"""Plugins: a throwaway origin registered without touching the core, in-process and via config."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from registry.errors import PackageDownloadFailed
from registry.hookspecs import hookimpl
from registry.origins import Download, Origin
from registry.settings import Setting, Settings
from tests.helpers import Api, base_config, inprocess_registry, package, start_registry

pytestmark = pytest.mark.anyio


class MemoryOrigin(Origin):
    """``memory://name``: packages held in a dict, declared sizes included."""

    name = "memory"

    def __init__(self, blobs: dict[str, bytes], names: dict[str, str]) -> None:
        self.blobs = blobs
        self.names = names  # key -> the file name (and display URL) the origin reports, when it does

    def accepts(self, url: str) -> bool:
        return url.startswith("memory://")

    @asynccontextmanager
    async def open(self, url: str, max_size: int) -> AsyncIterator[Download]:
        key = url.removeprefix("memory://")
        if key not in self.blobs:
            raise PackageDownloadFailed(f"no blob {key!r}")
        data = self.blobs[key]

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 7):
                yield data[start:start + 7]

        name = self.names.get(key, "")
        yield Download(chunks=chunks(), size=len(data), file_name=name,
                       display_url=f"memory://shown/{name}" if name else "")


class MemoryPlugin:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.names: dict[str, str] = {}
        self.events: list[tuple[str, int, str]] = []

    @hookimpl
    def registry_settings(self) -> list[Setting]:
        return [Setting("origins.memory.label", "str", "", "A key only this plugin knows.")]

    @hookimpl
    def registry_origins(self, settings: Settings) -> list[Origin]:
        return [MemoryOrigin(self.blobs, self.names)]

    @hookimpl
    async def registry_package_event(self, event) -> None:  # type: ignore[no-untyped-def]
        self.events.append((event.kind, event.record.id, event.operator))


@pytest.fixture
async def inprocess(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryPlugin]]:
    """The ASGI app in-process, with the memory plugin registered at build time."""
    tables = base_config(tmp_path)
    tables["origins"]["enabled"] = ["http", "memory"]
    tables["origins.memory"] = {"label": "test"}
    plugin = MemoryPlugin()
    async with inprocess_registry(tmp_path, tables, "plugin-tester", extra_plugins=[plugin]) as client:
        yield client, plugin


async def test_memory_origin_upload_and_events(inprocess: tuple[httpx.AsyncClient, MemoryPlugin]) -> None:
    client, plugin = inprocess
    data = package("4.5.6", salt="memory")
    plugin.blobs["pkgs/mem.tar.gz"] = data
    path = Api.path("mem")
    response = await client.post(path + "link/", json={"package_url": "memory://pkgs/mem.tar.gz"})
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["version"] == "4.5.6"
    assert record["package_name"] == "mem:4.5.6"
    assert record["sha256_signature"] == hashlib.sha256(data).hexdigest()
    download = await client.get(f"{path}{record['id']}/download/")
    assert download.content == data
    deleted = await client.delete(f"{path}{record['id']}/")
    assert deleted.status_code == 204
    restored = await client.post(f"{path}{record['id']}/restore/")
    assert restored.status_code == 200
    assert plugin.events == [("stored", record["id"], "plugin-tester"), ("deleted", record["id"], "plugin-tester"),
                             ("restored", record["id"], "plugin-tester")]


async def test_origins_name_the_file_and_the_url_to_show(inprocess: tuple[httpx.AsyncClient, MemoryPlugin],
                                                         tmp_path: Path) -> None:
    """The core takes the file name and the stored URL from the origin, and
    parses no URL as if it were HTTP: ``memory://name.tar.gz`` has no path."""
    client, plugin = inprocess
    plugin.blobs["bare.tar.gz"] = package(salt="bare")
    plugin.blobs["opaque-key"] = package(salt="named")
    plugin.names["opaque-key"] = "named-pkg.tar.gz"
    path = Api.path("mem-names")
    bare = await client.post(path + "link/", json={"package_url": "memory://bare.tar.gz", "version": "1.2.3"})
    assert bare.status_code == 201, bare.text
    assert bare.json()["package_name"] == "bare:1.2.3"  # not default:1.2.3
    named = await client.post(path + "link/", json={"package_url": "memory://opaque-key", "version": "2.0"})
    assert named.status_code == 201, named.text
    assert named.json()["package_name"] == "named-pkg:2.0"
    with sqlite3.connect(tmp_path / "registry.db") as db:
        stored = dict(db.execute("SELECT version, source_url FROM packages WHERE code = 'mem-names'").fetchall())
    assert stored == {"1.2.3": "memory://bare.tar.gz", "2.0": "memory://shown/named-pkg.tar.gz"}


async def test_plugin_errors_reach_the_client(inprocess: tuple[httpx.AsyncClient, MemoryPlugin]) -> None:
    client, _ = inprocess
    response = await client.post(Api.path("mem") + "link/", json={"package_url": "memory://absent", "version": "1"})
    assert response.status_code == 502
    assert response.json()["code"] == "PACKAGE_DOWNLOAD_FAILED"


async def test_unknown_scheme_still_unsupported(inprocess: tuple[httpx.AsyncClient, MemoryPlugin]) -> None:
    client, _ = inprocess
    response = await client.post(Api.path("mem") + "link/", json={"package_url": "gopher://x/y", "version": "1"})
    assert response.status_code == 400
    assert response.json()["code"] == "UNSUPPORTED_SOURCE_ORIGIN"


PLUGIN_MODULE = textwrap.dedent('''
    """A third-party origin loaded through [plugins] modules."""
    from contextlib import asynccontextmanager
    from registry.hookspecs import hookimpl
    from registry.origins import Download, Origin

    PAYLOADS = {}

    class EchoOrigin(Origin):
        name = "echo"

        def accepts(self, url):
            return url.startswith("echo://")

        @asynccontextmanager
        async def open(self, url, max_size):
            path = url.removeprefix("echo://")
            with open(path, "rb") as f:
                data = f.read()

            async def chunks():
                yield data

            yield Download(chunks=chunks(), size=len(data))

    @hookimpl
    def registry_origins(settings):
        return [EchoOrigin()]
''')


def test_plugin_module_loaded_from_config(tmp_path: Path) -> None:
    """A module named in [plugins] modules provides an origin to a real server."""
    (tmp_path / "plugin_src").mkdir()
    (tmp_path / "plugin_src" / "echo_origin.py").write_text(PLUGIN_MODULE)
    data = package("7.0.0", salt="echo")
    (tmp_path / "echo.tar.gz").write_bytes(data)
    tables = base_config(tmp_path / "srv")
    tables["plugins"] = {"modules": ["echo_origin"]}
    tables["origins"]["enabled"] = ["echo"]
    server = start_registry(tmp_path / "srv", tables, env={"PYTHONPATH": str(tmp_path / "plugin_src")})
    try:
        api = Api(server.url, server.token())
        response = api.link("echo", f"echo://{tmp_path / 'echo.tar.gz'}")
        assert response.status_code == 201, response.text
        assert response.json()["version"] == "7.0.0"
        assert api.download("echo", response.json()["id"]).content == data
        disabled = api.link("echo", "http://127.0.0.1:1/x.tar.gz", version="1")
        assert disabled.status_code == 400
        assert disabled.json()["code"] == "UNSUPPORTED_SOURCE_ORIGIN"
        api.close()
    finally:
        server.stop()


def test_builtin_plugins_come_from_the_entry_point_group() -> None:
    from registry.plugins import make_plugin_manager

    names = {name for name, _ in make_plugin_manager().list_name_plugin()}
    assert {"origin_http", "origin_file", "storage_filesystem"} <= names


def test_builtin_plugins_survive_another_top_level_plugins_package(tmp_path: Path) -> None:
    """Another distribution's ``plugins`` package, first on ``sys.path``, shadows nothing:
    the built-ins import as ``registry_plugins``."""
    foreign = tmp_path / "plugins"
    foreign.mkdir()
    (foreign / "__init__.py").write_text("raise ImportError('the wrong plugins package')\n")
    script = ("from registry.plugins import make_plugin_manager\n"
              "pm = make_plugin_manager()\n"
              "print(sorted(p.__name__ for n, p in pm.list_name_plugin() if n.startswith(('store_', 'storage_'))))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)}, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("'")[1::2] == [
        "registry_plugins.storage_filesystem", "registry_plugins.storage_s3",
        "registry_plugins.store_postgres", "registry_plugins.store_sqlite"]


# -- plugins that cannot load, and switching built-ins off ---------------------------------------


def write_module(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))


@pytest.mark.parametrize(("source", "message"), [
    ("raise RuntimeError('no licence server')\n",
     "plugins.modules: plugin 'broken_plugin' failed to import: RuntimeError: no licence server"),
    ("""
     from registry.hookspecs import hookimpl

     @hookimpl
     def registry_origins(setings):
         return []
     """, "plugins.modules: plugin 'broken_plugin': Plugin 'broken_plugin' for hook 'registry_origins'"),
    ("""
     from registry.hookspecs import hookimpl

     @hookimpl
     def registry_orgins(settings):
         return []
     """, "plugin 'broken_plugin': unknown hook 'registry_orgins'"),
])
def test_a_broken_plugin_stops_start_up_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  source: str, message: str) -> None:
    from registry.bootstrap import load_settings
    from registry.settings import SettingsError

    name = f"broken_plugin_{tmp_path.name}"  # a module name of its own: imports are cached
    write_module(tmp_path / "src", name, source)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    config = tmp_path / "registry.toml"
    config.write_text(f'[plugins]\nmodules = ["{name}"]\n')
    message = message.replace("broken_plugin", name)
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_built_in_plugin_can_be_switched_off(tmp_path: Path) -> None:
    from registry.bootstrap import load_settings
    from registry.settings import SettingsError

    config = tmp_path / "registry.toml"
    config.write_text('[plugins]\ndisabled = ["webhook", "origin_s3"]\n[origins]\nenabled = ["http", "file"]\n')
    settings, pm = load_settings(config)
    names = {name for name, plugin in pm.list_name_plugin() if plugin is not None}
    assert "webhook" not in names and "origin_s3" not in names
    assert {"origin_http", "origin_file", "audit"} <= names
    assert "webhooks.urls" not in settings  # its keys go with it

    config.write_text('[plugins]\ndisabled = ["webhooks"]\n')
    with pytest.raises(SettingsError, match=r"plugins\.disabled': no installed plugin named 'webhooks' \(installed: "):
        load_settings(config)


# -- hooks that may return an awaitable --------------------------------------------------------


class ShutdownProbe:
    """A failing shutdown hook beside one that works, and a filesystem storage that notes its shutdown."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def registry_shutdown(self) -> None:
        self.calls.append("sync shutdown")
        raise RuntimeError("shutdown hook failed")


class AsyncShutdown:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    async def registry_shutdown(self, registry: object) -> None:
        self.calls.append("async shutdown")
        raise RuntimeError("async shutdown hook failed")


async def test_a_failing_shutdown_hook_skips_neither_the_others_nor_the_storage(tmp_path: Path) -> None:
    from registry.bootstrap import build_registry, load_settings
    from tests.helpers import to_toml

    config = tmp_path / "registry.toml"
    config.write_text(to_toml(base_config(tmp_path)))
    probe = ShutdownProbe()
    settings, pm = load_settings(config, [probe, AsyncShutdown(probe.calls)])
    registry = build_registry(settings, pm)
    storage_shutdown = registry.storage.shutdown

    async def noted_shutdown() -> None:
        probe.calls.append("storage shutdown")
        await storage_shutdown()

    registry.storage.shutdown = noted_shutdown  # type: ignore[method-assign]
    await registry.startup()
    await registry.shutdown()
    assert sorted(probe.calls) == ["async shutdown", "storage shutdown", "sync shutdown"]
    assert probe.calls[-1] == "storage shutdown"


class FailingStartup:
    @hookimpl
    async def registry_startup(self) -> None:
        raise RuntimeError("cannot start")


async def test_a_failing_startup_hook_stops_start_up(tmp_path: Path) -> None:
    from registry.bootstrap import build_registry, load_settings
    from tests.helpers import to_toml

    config = tmp_path / "registry.toml"
    config.write_text(to_toml(base_config(tmp_path)))
    registry = build_registry(*load_settings(config, [FailingStartup()]))
    with pytest.raises(RuntimeError, match="cannot start"):
        await registry.startup()
    await registry.storage.shutdown()


class Wrapper:
    @hookimpl(wrapper=True)
    def registry_startup(self) -> object:
        return (yield)


def test_hook_wrappers_are_refused(tmp_path: Path) -> None:
    from registry.bootstrap import load_settings
    from registry.settings import SettingsError

    with pytest.raises(SettingsError, match="registry_startup is a hook wrapper; registry hooks do not support wrappers"):
        load_settings(None, [Wrapper()])


def test_setup_cfg_ships_every_package_the_code_holds() -> None:
    """``setup.cfg`` lists packages by hand (the built-ins sit under a folder of their
    own); a new sub-package missing from that list would be left out of installs."""
    import configparser

    repo = Path(__file__).resolve().parent.parent
    config = configparser.ConfigParser()
    config.read(repo / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    roots = {name.strip(): repo / folder.strip() for name, folder in
             (line.split("=") for line in config["options"]["package_dir"].strip().splitlines())}
    found = {".".join((name, *init.parent.relative_to(root).parts))
             for name, root in roots.items() for init in root.rglob("__init__.py")}
    assert found == listed


def test_loading_the_builtins_does_not_import_psycopg() -> None:
    """The PostgreSQL store's driver is imported only when ``database.url``
    names PostgreSQL: a registry on SQLite does not pay for it at start-up."""
    script = ("import sys\n"
              "from registry.plugins import make_plugin_manager\n"
              "make_plugin_manager()\n"
              "print(sorted(m for m in ('psycopg', 'psycopg_pool') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
