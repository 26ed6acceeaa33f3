"""Build a plugin manager: a factory, never a module global.

Each call returns a fresh :class:`pluggy.PluginManager` with the hookspecs
added, the ``registry`` entry-point group loaded (the built-in plugins are
declared there, like any third-party one) and the configured extra modules
registered. A plugin that cannot be imported or registered, or whose hook
implementations do not match the specifications (a misspelled argument, an
unknown ``registry_*`` hook), stops start-up with a :class:`SettingsError`
naming the plugin, not a pluggy traceback.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable

import pluggy

from registry import hookspecs
from registry.settings import SettingsError

ENTRY_POINT_GROUP = "registry"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None, label: str) -> None:
    """Register ``plugin``; :raises SettingsError: naming ``label`` when pluggy refuses it."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise SettingsError(f"{label}: {_first_line(exc)}") from exc
    except ValueError as exc:  # a second plugin under a name already taken
        raise SettingsError(f"{label}: {exc}") from exc


def make_plugin_manager(
    modules: Iterable[str] = (), extra: Iterable[object] = (), disabled: Iterable[str] = ()
) -> pluggy.PluginManager:
    """A plugin manager with every hook implementation the registry will use.

    :param modules: dotted module names from ``[plugins] modules``.
    :param extra: plugin objects registered last (embedding applications use
        this to add plugins without packaging them).
    :param disabled: entry-point names from ``[plugins] disabled``, which are
        blocked (pluggy's ``set_blocked``) and never imported.
    :raises SettingsError: naming the plugin that cannot be imported or
        registered, or the disabled name no installed plugin has.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    # one scan of every installed distribution's metadata (a few ms each)
    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    installed = sorted(set(entry_points.names))  # what ``[plugins] disabled`` may list
    for name in disabled:
        if name not in installed:
            raise SettingsError(
                f"configuration key 'plugins.disabled': no installed plugin named {name!r}"
                f" (installed: {', '.join(installed)})")
        pm.set_blocked(name)
    for entry_point in entry_points:
        if pm.is_blocked(entry_point.name) or pm.get_plugin(entry_point.name) is not None:
            continue
        label = f"plugin {entry_point.name!r} ({entry_point.value})"
        try:
            plugin = entry_point.load()
        except Exception as exc:  # any failure of third-party code at import: name the plugin
            raise SettingsError(f"{label} failed to import: {type(exc).__name__}: {_first_line(exc)}") from exc
        _register(pm, plugin, entry_point.name, label)
    for name in modules:
        if pm.get_plugin(name) is not None:
            continue
        label = f"plugins.modules: plugin {name!r}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # any failure of third-party code at import: name the plugin
            raise SettingsError(f"{label} failed to import: {type(exc).__name__}: {_first_line(exc)}") from exc
        if pm.is_registered(module):  # already loaded through its entry point
            continue
        _register(pm, module, name, label)
    for plugin in extra:
        _register(pm, plugin, None, f"plugin {type(plugin).__name__}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise SettingsError(f"plugin {name!r}: {_first_line(exc)}") from exc
    _refuse_wrappers(pm)
    return pm


def _refuse_wrappers(pm: pluggy.PluginManager) -> None:
    """Hook wrappers would be skipped by :func:`registry.hooks.call_hook`: refuse them
    at start-up rather than let them silently not run."""
    for name in dir(hookspecs):
        caller = getattr(pm.hook, name, None) if name.startswith(hookspecs.PROJECT + "_") else None
        if caller is None:
            continue
        for impl in caller.get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                raise SettingsError(f"plugin {impl.plugin_name!r}: {name} is a hook wrapper;"
                                    " registry hooks do not support wrappers")
