"""From a config file to a ready :class:`Registry`: settings, plugins, storage, origins."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pluggy

from registry.plugins import make_plugin_manager
from registry.service import Registry
from registry.settings import (
    CORE_SETTINGS,
    Settings,
    SettingsError,
    build_settings,
    plugin_modules,
    read_config_file,
)

logger = logging.getLogger("registry")


def load_settings(config: Path | None, extra_plugins: Iterable[object] = ()) -> tuple[Settings, pluggy.PluginManager]:
    """Read and validate ``config`` with every plugin's keys.

    :raises SettingsError: naming the unknown key, wrong type or bad plugin.
    """
    raw = read_config_file(config)
    pm = make_plugin_manager(plugin_modules(raw), extra_plugins)
    specs = list(CORE_SETTINGS)
    for contributed in pm.hook.registry_settings():
        specs.extend(contributed)
    return build_settings(raw, specs, config), pm


def build_registry(settings: Settings, pm: pluggy.PluginManager) -> Registry:
    """The service with its storage, origins and record store, not yet started.

    :raises SettingsError: no plugin provides the configured storage or record store.
    """
    backend = settings["storage.backend"]
    storage = pm.hook.registry_storage(backend=backend, settings=settings)
    if storage is None:
        raise SettingsError(f"configuration key 'storage.backend': no storage plugin named {backend!r}")
    origins = [origin for provided in pm.hook.registry_origins(settings=settings) if provided for origin in provided]
    known = {origin.name for origin in origins}
    for name in settings["origins.enabled"]:
        if name not in known:
            logger.warning("origins.enabled lists %r, but no installed plugin provides it", name)
    store = pm.hook.registry_record_store(settings=settings)
    if store is None:
        raise SettingsError("configuration key 'database.url': no record-store plugin accepts it")
    return Registry(settings, pm, storage, origins, store)
