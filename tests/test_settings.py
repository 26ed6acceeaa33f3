"""Settings: one table, unknown keys and wrong types stop start-up, paths relative to the file."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from registry.bootstrap import load_settings
from registry.hookspecs import hookimpl
from registry.settings import CORE_SETTINGS, Setting, SettingsError, find_config_file
from tests.helpers import base_config, free_port, registry_command, to_toml

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(text)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*registry_command(), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, **(env or {})}, check=False)


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REGISTRY_CONFIG", raising=False)
    assert find_config_file(None) is None
    settings, _ = load_settings(None)
    assert settings["server.port"] == 8000
    assert settings["limits.max_package_size"] == 2147483648
    assert settings["origins.http.allow_private_networks"] is False
    assert settings["database.path"] == str(tmp_path / "var" / "registry.db")


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    config = write(tmp_path, '[database]\npath = "data/r.db"\n[storage.filesystem]\nroot = "blobs"\n'
                             '[origins.file]\nallowed_roots = ["in", "/abs"]\n')
    settings, _ = load_settings(config)
    assert settings["database.path"] == str(tmp_path / "data" / "r.db")
    assert settings["storage.filesystem.root"] == str(tmp_path / "blobs")
    assert settings["origins.file.allowed_roots"] == [str(tmp_path / "in"), "/abs"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[limits]\nmax_package_size = \"big\"\n", "limits.max_package_size"),
        ("[auth]\nanonymous_read = 1\n", "auth.anonymous_read"),
        ("[origins.http]\nallowed_hosts = \"example.com\"\n", "origins.http.allowed_hosts"),
        ("[origins.http]\nmax_redirects = true\n", "origins.http.max_redirects"),
        ("[nonsense]\nx = 1\n", "nonsense.x"),
        ("[server]\ntime_zone = \"Mars/Olympus\"\n", "server.time_zone"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[limits]\nmax_members = 0\n", "limits.max_members"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = write(tmp_path, text)
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(config)
    result = run_cli("--config", str(config), "serve", "--port", str(free_port()))
    assert result.returncode == 1
    assert key in result.stderr


def test_every_key_is_documented_in_the_readme() -> None:
    """The README's configuration table lists the core's keys and every built-in plugin's."""
    from registry.plugins import make_plugin_manager

    specs = list(CORE_SETTINGS)
    for contributed in make_plugin_manager().hook.registry_settings():
        specs.extend(contributed)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [s.key for s in specs if f"| `{s.key}` |" not in readme]
    assert missing == []


def test_check_config(tmp_path: Path) -> None:
    config = write(tmp_path, to_toml(base_config(tmp_path)))
    ok = run_cli("--config", str(config), "check-config")
    assert ok.returncode == 0, ok.stderr
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    tables = base_config(tmp_path)
    tables["storage.filesystem"]["root"] = str(blocker / "packages")
    bad = write(tmp_path, to_toml(tables))
    failed = run_cli("--config", str(bad), "check-config")
    assert failed.returncode == 1
    assert "OBJECT_STORE_EXCEPTION" in failed.stderr
    assert "storage.filesystem.root: cannot create" in failed.stderr
    assert not (blocker.parent / "packages").exists()
    missing = run_cli("--config", str(tmp_path / "absent.toml"), "check-config")
    assert missing.returncode == 1
    assert "absent.toml" in missing.stderr


def test_config_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path, "[server]\nport = 1\nbogus = 2\n")
    result = run_cli("check-config", cwd=tmp_path.parent, env={"REGISTRY_CONFIG": str(config)})
    assert result.returncode == 1
    assert "server.bogus" in result.stderr


def test_fresh_checkout_serves_on_the_shipped_defaults(tmp_path: Path) -> None:
    """The repository's registry.toml, found as ./registry.toml, runs with data under var/."""
    shutil.copy(REPO / "registry.toml", tmp_path / "registry.toml")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REGISTRY_CONFIG"}
    process = subprocess.Popen([*registry_command(), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "registry serve exited"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "registry serve never answered"
                time.sleep(0.05)
        assert response.status_code == 200
        assert (tmp_path / "var" / "registry.db").is_file()
        assert (tmp_path / "var" / "packages" / ".staging").is_dir()
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_stale_staging_files_are_swept_at_startup(tmp_path: Path) -> None:
    from tests.helpers import staged_files, start_registry

    staging = tmp_path / "packages" / ".staging"
    staging.mkdir(parents=True)
    (staging / "upload-stale.part").write_bytes(b"half an upload")
    server = start_registry(tmp_path, base_config(tmp_path))
    try:
        assert staged_files(staging) == []
        assert not (staging / "upload-stale.part").exists()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[origins.http]\nconnect_timeout = -1\n", "origins.http.connect_timeout"),
        ("[origins.http]\ntotal_timeout = 0\n", "origins.http.total_timeout"),
        ("[origins.http]\nmax_redirects = -1\n", "origins.http.max_redirects"),
        ("[webhooks]\nmax_attempts = 0\n", "webhooks.max_attempts"),
        ("[webhooks]\nurls = [\"ftp://example.com/hook\"]\n", "webhooks.urls"),
        ("[webhooks]\nurls = [\"http://xn--/\"]\n", "webhooks.urls"),
        ("[storage.s3]\nendpoint_url = \"localhost:9000\"\n", "storage.s3.endpoint_url"),
        ("[origins.s3]\nendpoint_url = \"http://host:port\"\n", "origins.s3.endpoint_url"),
    ],
)
def test_plugin_values_are_checked_at_start_up(tmp_path: Path, text: str, key: str) -> None:
    """Values of the right type that could only fail later, at request time, stop start-up."""
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(write(tmp_path, text))


def test_operator_command_on_an_unusable_database_says_why(tmp_path: Path) -> None:
    (tmp_path / "not-a-database").write_bytes(b"x" * 4096)
    config = write(tmp_path, f'[database]\npath = "{tmp_path / "not-a-database"}"\n')
    result = run_cli("--config", str(config), "token", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("error: DATABASE_UNAVAILABLE")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["db-is-a-folder", "a-file/registry.db"])
def test_a_database_path_that_cannot_be_used_names_the_key(tmp_path: Path, where: str) -> None:
    (tmp_path / "db-is-a-folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    config = write(tmp_path, f'[database]\npath = "{tmp_path / where}"\n')
    for command in (["token", "list"], ["check-config"]):
        result = run_cli("--config", str(config), *command)
        assert result.returncode == 1
        assert result.stderr.startswith("error: configuration key 'database.path': "), result.stderr
        assert "Traceback" not in result.stderr


def test_a_misspelled_origin_stops_start_up(tmp_path: Path) -> None:
    config = write(tmp_path, to_toml({**base_config(tmp_path), "origins": {"enabled": ["http", "htpp"]}}))
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 1
    assert "configuration key 'origins.enabled': no origin named 'htpp' (origins: file, http, s3)" in result.stderr


def test_without_a_config_file_commands_say_so_and_check_config_creates_nothing(tmp_path: Path) -> None:
    env = {"REGISTRY_CONFIG": ""}
    checked = run_cli("check-config", cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "note: no config file" in checked.stderr
    assert f"database {tmp_path / 'var' / 'registry.db'}" in checked.stderr
    assert "(not created yet)" in checked.stdout
    assert list(tmp_path.iterdir()) == []

    created = run_cli("token", "create", "--operator", "ops", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    assert f"note: no config file (--config, $REGISTRY_CONFIG, ./registry.toml); built-in defaults and the" \
           f" environment, database {tmp_path / 'var' / 'registry.db'}" in created.stderr
    again = run_cli("check-config", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "(exists)" in again.stdout, again.stderr


# -- the environment ------------------------------------------------------------------------


def test_environment_overrides_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, '[server]\nport = 9000\n[limits]\nmax_members = 7\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REGISTRY_SERVER_PORT", "9001")  # a TOML integer
    monkeypatch.setenv("REGISTRY_STORAGE_BACKEND", "filesystem")  # a bare word: a string
    monkeypatch.setenv("REGISTRY_SERVER_TIME_ZONE", '"Asia/Shanghai"')  # a TOML string
    monkeypatch.setenv("REGISTRY_ORIGINS_HTTP_ALLOWED_HOSTS", '["a.example", "b.example:8080"]')
    monkeypatch.setenv("REGISTRY_AUTH_ANONYMOUS_READ", "true")
    monkeypatch.setenv("REGISTRY_STORAGE_FILESYSTEM_ROOT", "elsewhere")  # relative to the current folder
    settings, _ = load_settings(config)
    assert settings["server.port"] == 9001
    assert settings["limits.max_members"] == 7  # the file still counts where the environment is silent
    assert settings["storage.backend"] == "filesystem"
    assert settings["server.time_zone"] == "Asia/Shanghai"
    assert settings["origins.http.allowed_hosts"] == ["a.example", "b.example:8080"]
    assert settings["auth.anonymous_read"] is True
    assert settings["storage.filesystem.root"] == str(tmp_path / "elsewhere")


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("REGISTRY_SERVER_PORT", "eighty", "environment variable REGISTRY_SERVER_PORT (key 'server.port') must be of type int"),
    ("REGISTRY_SERVER_PORT", "99999", "environment variable REGISTRY_SERVER_PORT (key 'server.port'): must be a port"),
    ("REGISTRY_ORIGINS_ENABLED", '["http"', "environment variable REGISTRY_ORIGINS_ENABLED (key 'origins.enabled')"),
    ("REGISTRY_PLUGINS_MODULES", "nope", "environment variable REGISTRY_PLUGINS_MODULES must be of type list[str]"),
])
def test_a_bad_environment_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    variable: str, value: str, message: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, ""))
    assert message in str(caught.value)


def test_the_environment_reaches_a_served_registry(tmp_path: Path) -> None:
    """check-config reports the database a variable names (the command-line path, end to end)."""
    config = write(tmp_path, to_toml(base_config(tmp_path)))
    result = run_cli("--config", str(config), "check-config", env={"REGISTRY_DATABASE_PATH": str(tmp_path / "env.db")})
    assert result.returncode == 0, result.stderr
    assert f"database sqlite {tmp_path / 'env.db'}" in result.stdout


# -- keys declared twice ----------------------------------------------------------------------


class PortPlugin:
    """Declares a key the core owns."""

    @hookimpl
    def registry_settings(self) -> list[Setting]:
        return [Setting("server.port", "int", 1, "Port, again.")]


class LabelPlugin:
    @hookimpl
    def registry_settings(self) -> list[Setting]:
        return [Setting("origins.memory.label", "str", "", "A label.")]


class OtherLabelPlugin:
    @hookimpl
    def registry_settings(self) -> list[Setting]:
        return [Setting("origins.memory.label", "str", "x", "The same label.")]


def test_a_key_declared_twice_stops_start_up_naming_both(tmp_path: Path) -> None:
    config = write(tmp_path, "")
    with pytest.raises(SettingsError, match=r"'server\.port' is declared twice: by the core and by plugin 'PortPlugin'"):
        load_settings(config, [PortPlugin()])
    with pytest.raises(SettingsError, match=r"'origins\.memory\.label' is declared twice: by plugin 'LabelPlugin'"
                                            r" and by plugin 'OtherLabelPlugin'"):
        load_settings(config, [LabelPlugin(), OtherLabelPlugin()])


def test_the_listening_socket_says_it_is_tcp() -> None:
    """asyncio turns Nagle's algorithm off only on sockets whose proto is TCP;
    with it on, every keep-alive request waited for a delayed ACK."""
    import socket

    from registry.serve import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
