"""Build a plugin manager: a factory, never a module global.

Each call returns a fresh :class:`pluggy.PluginManager` with the hookspecs
added, the ``registry`` entry-point group loaded (the built-in plugins are
declared there, like any third-party one) and the configured extra modules
registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import pluggy

from registry import hookspecs
from registry.settings import SettingsError

ENTRY_POINT_GROUP = "registry"


def make_plugin_manager(modules: Iterable[str] = (), extra: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with every hook implementation the registry will use.

    :param modules: dotted module names from ``[plugins] modules``.
    :param extra: plugin objects registered last (embedding applications use
        this to add plugins without packaging them).
    :raises SettingsError: a module cannot be imported or implements an
        unknown hook.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for name in modules:
        if pm.get_plugin(name) is not None:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise SettingsError(f"plugins.modules: cannot import {name!r}: {exc}") from exc
        if pm.is_registered(module):  # already loaded through its entry point
            continue
        pm.register(module, name=name)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise SettingsError(f"plugin error: {exc}") from exc
    return pm
