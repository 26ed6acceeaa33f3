"""From a config file to a ready :class:`Registry`: settings, plugins, storage, origins."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import pluggy

from registry.fsutil import creatable_problem
from registry.plugins import make_plugin_manager
from registry.service import Registry
from registry.settings import (
    CORE,
    CORE_SETTINGS,
    Setting,
    Settings,
    SettingsError,
    build_settings,
    disabled_plugins,
    merge_declarations,
    plugin_modules,
    read_config_file,
)

logger = logging.getLogger("registry")


def load_settings(config: Path | None, extra_plugins: Iterable[object] = ()) -> tuple[Settings, pluggy.PluginManager]:
    """Read and validate ``config`` with every plugin's keys.

    :raises SettingsError: naming the unknown key, wrong type or bad plugin.
    """
    raw = read_config_file(config)
    pm = make_plugin_manager(plugin_modules(raw), extra_plugins, disabled_plugins(raw))
    sources: list[tuple[str, Iterable[Setting]]] = [(CORE, CORE_SETTINGS)]
    # each implementation called on its own, so a key declared twice names both plugins
    for impl in pm.hook.registry_settings.get_hookimpls():
        # plugins registered without a name (embedding applications) are named by their class
        name = type(impl.plugin).__name__ if impl.plugin_name.isdigit() else impl.plugin_name
        declarer = f"plugin {name!r}"
        try:
            declared = cast("list[Setting] | None", impl.function()) or []
        except Exception as exc:  # third-party code: name the plugin, not a traceback
            raise SettingsError(f"{declarer}: registry_settings failed: {type(exc).__name__}: {exc}") from exc
        sources.append((declarer, declared))
    return build_settings(raw, merge_declarations(sources), config), pm


def build_registry(settings: Settings, pm: pluggy.PluginManager) -> Registry:
    """The service with its storage, origins and record store, not yet started.

    :raises SettingsError: no plugin provides the configured storage, an
        enabled origin or the record store, or the database file could not be created.
    """
    if not settings["database.url"]:  # the SQLite file; a URL names a server's database instead
        problem = creatable_problem(Path(settings["database.path"]))
        if problem is not None:
            raise SettingsError(f"configuration key 'database.path': {problem}")
    backend = settings["storage.backend"]
    storage = pm.hook.registry_storage(backend=backend, settings=settings)
    if storage is None:
        raise SettingsError(f"configuration key 'storage.backend': no storage plugin named {backend!r}")
    origins = [origin for provided in pm.hook.registry_origins(settings=settings) if provided for origin in provided]
    known = {origin.name for origin in origins}
    unknown = [name for name in settings["origins.enabled"] if name not in known]
    if unknown:
        raise SettingsError(
            f"configuration key 'origins.enabled': no origin named {', '.join(map(repr, unknown))}"
            f" (origins: {', '.join(sorted(known)) or 'none installed'})")
    store = pm.hook.registry_record_store(settings=settings)
    if store is None:
        raise SettingsError("configuration key 'database.url': no record-store plugin accepts it")
    return Registry(settings, pm, storage, origins, store)
