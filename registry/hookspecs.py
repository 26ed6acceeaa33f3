"""Hook specifications: everything a plugin can provide.

The built-in plugins implement these hooks exactly like a third-party plugin
does, and are found the same way: the ``registry`` entry-point group, then
``[plugins] modules``. They live in the ``registry_plugins`` package (the
``plugins/registry_plugins/`` folder). ``[plugins] disabled`` switches any of
them off by name:

- ``origin_http``: ``http(s)://`` links, with the SSRF policy of ``[origins.http]``;
- ``origin_file``: ``file://`` links below ``[origins.file] allowed_roots``;
- ``origin_s3``: ``s3://bucket/key`` links;
- ``storage_filesystem``: ``[storage] backend = "filesystem"``;
- ``storage_s3``: ``[storage] backend = "s3"``;
- ``audit``: keeps every package event in the ``events`` table (``registry events``);
- ``webhook``: POSTs every package event to ``[webhooks] urls``;
- ``store_sqlite``: ``[database] url`` unset or ``sqlite:///…`` (the embedded default);
- ``store_postgres``: ``[database] url = "postgresql://…"``.

Hooks may be implemented as plain functions; where a hook says it may return
an awaitable, the core awaits it (:func:`registry.hooks.call_hook` calls those
hooks, one implementation at a time). Hook wrappers (``hookwrapper=True`` or
``wrapper=True``) are not supported for any hook here and stop start-up.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from registry.events import PackageEvent
    from registry.origins import Origin
    from registry.service import Registry
    from registry.settings import Setting, Settings
    from registry.storage import Storage
    from registry.store import RecordStore

PROJECT = "registry"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def registry_settings() -> list[Setting] | None:
    """Declare the configuration keys this plugin reads.

    Keys live under the plugin's own table, e.g. ``origins.http.*`` or
    ``storage.s3.*``. A key no plugin declares stops start-up.

    :return: the plugin's :class:`registry.settings.Setting` entries.
    """
    raise NotImplementedError  # a specification: pluggy never calls its body


@hookspec
def registry_origins(settings: Settings) -> list[Origin] | None:
    """Provide origins: things that fetch a ``package_url``.

    Called once at start-up. The core keeps the origins whose ``name`` is in
    ``[origins] enabled`` and, for each link upload, uses the first one (in
    hook call order, last registered first) whose ``accepts(url)`` is true.
    When none accepts, the upload fails with ``UNSUPPORTED_SOURCE_ORIGIN``.

    :param settings: the validated configuration.
    :return: a list of :class:`registry.origins.Origin`, or None.
    """


@hookspec(firstresult=True)
def registry_storage(backend: str, settings: Settings) -> Storage | None:
    """Build the storage selected by ``[storage] backend``.

    Stops at the first non-None result. A plugin returns its
    :class:`registry.storage.Storage` when ``backend`` is its own name and None
    otherwise.

    :param backend: the configured backend name.
    :param settings: the validated configuration.
    """


@hookspec(firstresult=True)
def registry_record_store(settings: Settings) -> RecordStore | None:
    """Build the record store selected by ``[database]``.

    Stops at the first non-None result. The built-in SQLite store answers
    when ``database.url`` is empty, the PostgreSQL store when it is a
    ``postgresql://`` URL; a plugin for another database returns its
    :class:`registry.store.RecordStore` for URLs of its own scheme and None
    otherwise. The store is not migrated yet: the core calls ``migrate()``.

    :param settings: the validated configuration.
    """


@hookspec
def registry_package_event(event: PackageEvent, registry: Registry) -> Awaitable[None] | None:
    """A package was stored, overwritten, deleted or restored.

    Called after the change is committed, once per implementation; may return
    an awaitable, which is awaited before the request answers, so keep it
    short (hand slow work such as network calls to a task started in
    :func:`registry_startup`). An exception raised here is logged and does not
    undo the change or fail the request, so audit logs, webhooks and metrics
    cannot break uploads.

    :param event: what happened, to which record, by whom.
    :param registry: the service, for its database and settings.
    """


@hookspec
def registry_startup(registry: Registry) -> Awaitable[None] | None:
    """The service is starting, after its database and storage are ready.

    May return an awaitable. Start background workers here; an exception stops
    start-up.

    :param registry: the service being started.
    """


@hookspec
def registry_shutdown(registry: Registry) -> Awaitable[None] | None:
    """The service is stopping; finish or drop background work. May be async.

    An exception is logged and the other plugins' hooks still run, as does
    the storage's shutdown afterwards.

    :param registry: the service being stopped.
    """
