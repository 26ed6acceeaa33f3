"""Settings: one table of keys, loaded from one TOML file.

Every key the registry reads is declared once as a :class:`Setting` (name,
type, default, help). The core declares its own in :data:`CORE_SETTINGS`;
plugins add theirs through the ``registry_settings`` hook, so a third-party
storage can own ``[storage.mystore]`` without touching the core. Loading rejects
any key nobody declared and any value of the wrong type, naming the key, so a
typo stops start-up instead of being silently ignored.

Every key can also come from the environment, which wins over the file:
``REGISTRY_`` + the key upper-cased with dots as underscores
(``REGISTRY_STORAGE_S3_BUCKET``). The value is read as a TOML value
(``8001``, ``true``, ``["a", "b"]``); anything that is not one, such as a
bare word, is taken as a string. Errors about such a value name the variable.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_ENV = "REGISTRY_CONFIG"
DEFAULT_CONFIG_NAME = "registry.toml"
ENV_PREFIX = "REGISTRY_"
#: Who declares the core's own keys, in duplicate-key errors.
CORE = "the core"


class SettingsError(Exception):
    """The configuration cannot be used; the message names the key."""


def positive(value: Any) -> str | None:
    """A ``check`` for numbers that must be greater than 0 (for plugins too)."""
    return None if value > 0 else "must be greater than 0"


def not_negative(value: Any) -> str | None:
    """A ``check`` for numbers that must be 0 or more (for plugins too)."""
    return None if value >= 0 else "must be 0 or more"


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number (0-65535)"


def _host(value: Any) -> str | None:
    from registry.serve import host_problem

    return host_problem(value)


def _addresses(value: Any) -> str | None:
    for item in value:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP address or network"
    return None


def _time_zone(value: Any) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r}"
    return None


def _database_url(value: Any) -> str | None:
    # the message never repeats the value: it may hold a password
    if value == "" or str(value).startswith(("postgresql://", "postgres://")):
        return None
    return "must be empty (SQLite at database.path) or a postgresql:// URL"


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
}


@dataclass(frozen=True)
class Setting:
    """One configuration key.

    :param key: dotted name, e.g. ``limits.max_package_size`` for
        ``[limits] max_package_size``.
    :param type: one of ``str``, ``int``, ``float``, ``bool``, ``list[str]``.
    :param default: the value when the file does not set it.
    :param help: one sentence for the README table and error messages.
    :param path: a path (or list of paths) resolved against the config file's
        folder when relative.
    :param check: returns an error message for a value of the right type that
        is still unusable, or None.
    """

    key: str
    type: str
    default: Any
    help: str
    path: bool = False
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPE_CHECKS:
            raise ValueError(f"setting {self.key}: unknown type {self.type!r}")


CORE_SETTINGS: tuple[Setting, ...] = (
    Setting("server.host", "str", "127.0.0.1", "Address `registry serve` listens on.", check=_host),
    Setting("server.port", "int", 8000, "Port `registry serve` listens on.", check=_port),
    Setting("server.time_zone", "str", "UTC", "Time zone of `created`/`updated` in records.", check=_time_zone),
    Setting("server.workers", "int", 1, "Processes `registry serve` runs, sharing the port (0: one per core).",
            check=not_negative),
    Setting("server.header_timeout", "float", 30, "Seconds a client has to send a request's head.", check=positive),
    Setting("server.body_idle_timeout", "float", 60,
            "Seconds without a body byte before a request is answered 408 and its upload dropped.", check=positive),
    Setting("server.max_connections", "int", 1000,
            "Connections per process; beyond it a new connection gets 503 at once.", check=positive),
    Setting("server.forwarded_allow_ips", "list[str]", [],
            "Proxy addresses whose X-Forwarded-For/Proto are trusted (`*`: any).", check=_addresses),
    Setting("database.path", "str", "var/registry.db", "SQLite database file.", path=True),
    Setting("database.url", "str", "",
            "`postgresql://user@host:5432/db`: keep records in PostgreSQL instead of the SQLite file.",
            check=_database_url),
    Setting("database.pool_size", "int", 10, "Connections per process (PostgreSQL).", check=positive),
    Setting("database.timeout", "float", 30.0,
            "Seconds a request waits for the database (a lock, a connection) before answering 503.",
            check=positive),
    Setting("storage.backend", "str", "filesystem", "Name of the storage plugin that keeps the blobs."),
    Setting("storage.staging_dir", "str", "",
            "Local folder for uploads in flight, one locked subfolder per process (empty: `<root>/.staging` for the "
            "filesystem backend, `staging` beside the database for others).",
            path=True),
    Setting("origins.enabled", "list[str]", ["http", "s3", "file"], "Origin plugins that may serve `package_url`."),
    Setting("limits.max_package_size", "int", 2 * 1024**3, "Largest package accepted, in bytes as received.", check=positive),
    Setting("limits.max_unpacked_size", "int", 8 * 1024**3, "Largest total size of all archive members, in bytes.", check=positive),
    Setting("limits.max_compression_ratio", "int", 100,
            "Largest unpacked/packed ratio, checked once the unpacked total passes 64 MiB.", check=positive),
    Setting("limits.max_members", "int", 100_000, "Most members an archive may hold.", check=positive),
    Setting("auth.anonymous_read", "bool", False, "Allow reads without a credential."),
    Setting("retention.keep_last", "int", 0,
            "Live versions `registry gc` keeps per module, newest first; older ones are soft-deleted (0: keep all).",
            check=not_negative),
    Setting("plugins.modules", "list[str]", [], "Extra plugin modules to import and register."),
    Setting("ui.enabled", "bool", True, "Serve the web interface under `/ui/` (false: every `/ui/` path is a 404)."),
    Setting("ui.session_secret", "str", "",
            "Key that signs web sessions; empty: generated once and kept beside the SQLite database (required with `database.url`)."),
    Setting("plugins.disabled", "list[str]", [], "Built-in plugins to switch off, by entry-point name."),
    Setting("jobs.max_running", "int", 4, "Background link uploads running at once, per process.", check=positive),
    Setting("jobs.key_file", "str", "",
            "File with the 32-byte key (raw or 64 hex digits) that seals background jobs' URLs in the record store;"
            " empty: made beside the SQLite database. Give every instance sharing `database.url` the same key.",
            path=True),
    Setting("jobs.keep_finished", "int", 7 * 86400, "Seconds a finished background job stays visible.", check=positive),
    Setting("uploads.expire_after", "int", 86400, "Seconds an unfinished resumable upload is kept.", check=positive),
)


class Settings(Mapping[str, Any]):
    """Validated configuration values by dotted key; read-only.

    :param values: every declared key with its final value.
    :param source: the file the values came from, or None for pure defaults.
    """

    def __init__(self, values: dict[str, Any], source: Path | None) -> None:
        self._values = dict(values)
        self.source = source

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def find_config_file(explicit: str | None) -> Path | None:
    """The file to read: ``--config``, then ``$REGISTRY_CONFIG``, then ``./registry.toml``.

    Returns None when none was named and ``./registry.toml`` does not exist, so
    the registry runs on its defaults.
    """
    named = explicit or os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise SettingsError(f"config file not found: {path}")
        return path.resolve()
    default = Path(DEFAULT_CONFIG_NAME)
    return default.resolve() if default.is_file() else None


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The raw TOML tables of ``path`` (empty when None)."""
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc


def env_name(key: str) -> str:
    """The variable that overrides ``key``: ``storage.s3.bucket`` -> ``REGISTRY_STORAGE_S3_BUCKET``."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def env_value(text: str) -> Any:
    """A variable's text as the TOML value it spells, or as a string when it spells none."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _early_list(raw: dict[str, Any], key: str, environ: Mapping[str, str]) -> list[str]:
    """A ``list[str]`` key read before validation (plugins declare the other keys)."""
    table, _, name = key.partition(".")
    variable = env_name(key)
    if variable in environ:
        value, where = env_value(environ[variable]), f"environment variable {variable}"
    else:
        section = raw.get(table, {})
        value, where = (section.get(name, []) if isinstance(section, dict) else []), f"configuration key '{key}'"
    if not _TYPE_CHECKS["list[str]"](value):
        raise SettingsError(f"{where} must be of type list[str], got {value!r}")
    return list(value)


def plugin_modules(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> list[str]:
    """``[plugins] modules`` read before validation: plugins declare the other keys."""
    return _early_list(raw, "plugins.modules", os.environ if environ is None else environ)


def disabled_plugins(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> list[str]:
    """``[plugins] disabled`` read before validation, like :func:`plugin_modules`."""
    return _early_list(raw, "plugins.disabled", os.environ if environ is None else environ)


def merge_declarations(sources: Iterable[tuple[str, Iterable[Setting]]]) -> list[Setting]:
    """Every declared setting, from ``(declarer, settings)`` pairs.

    :raises SettingsError: a key declared twice, naming both declarers (two
        plugins, or a plugin and the core, would otherwise silently disagree
        on its type or default).
    """
    owners: dict[str, str] = {}
    merged: list[Setting] = []
    for declarer, settings in sources:
        for spec in settings:
            if spec.key in owners:
                raise SettingsError(
                    f"configuration key '{spec.key}' is declared twice: by {owners[spec.key]} and by {declarer}")
            owners[spec.key] = declarer
            merged.append(spec)
    return merged


def _flatten(table: dict[str, Any], declared: set[str], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in declared:
            yield from _flatten(value, declared, key + ".")
        else:
            yield key, value


def build_settings(
    raw: dict[str, Any], specs: Iterable[Setting], source: Path | None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate ``raw`` and the environment's overrides against ``specs`` and fill in defaults.

    Relative path settings are resolved against ``source``'s folder (the
    current directory when there is no file, and for values from the
    environment).

    :param environ: the variables to read overrides from (default: ``os.environ``).
    :raises SettingsError: naming the first unknown key or badly typed value
        (or the variable that set it).
    """
    table = {spec.key: spec for spec in specs}
    environ = os.environ if environ is None else environ
    base = source.parent if source is not None else Path.cwd()
    values = {key: spec.default for key, spec in table.items()}
    bases = {key: base for key in table}
    given: list[tuple[str, Any, str]] = []
    for key, value in _flatten(raw, set(table)):
        if key not in table:
            raise SettingsError(f"unknown configuration key '{key}'")
        given.append((key, value, f"configuration key '{key}'"))
    for key in table:
        variable = env_name(key)
        if variable in environ:
            given.append((key, env_value(environ[variable]), f"environment variable {variable} (key '{key}')"))
            bases[key] = Path.cwd()
    for key, value, where in given:  # the environment's entries come last: they win
        spec = table[key]
        if not _TYPE_CHECKS[spec.type](value):
            raise SettingsError(f"{where} must be of type {spec.type}, got {value!r}")
        if spec.check is not None and (problem := spec.check(value)):
            raise SettingsError(f"{where}: {problem}")
        values[key] = value
    for key, spec in table.items():
        if spec.path:
            values[key] = _resolve_paths(values[key], bases[key])
    return Settings(values, source)


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    if value == "":
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())
