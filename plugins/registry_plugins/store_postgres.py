"""Built-in plugin ``store_postgres``: the record store in PostgreSQL, for several instances.

Chosen when ``[database] url`` is a ``postgresql://`` URL. The store itself
is :class:`registry_plugins.postgres_store.PostgresStore`, imported only
then: psycopg and its pool cost a registry on SQLite nothing at start-up.
"""

from __future__ import annotations

from registry.hookspecs import hookimpl
from registry.settings import Settings
from registry.store import RecordStore


@hookimpl
def registry_record_store(settings: Settings) -> RecordStore | None:
    """The PostgreSQL store when ``[database] url`` is a ``postgresql://`` URL."""
    url: str = settings["database.url"]
    if not url.startswith(("postgresql://", "postgres://")):
        return None
    from registry_plugins.postgres_store import PostgresStore

    return PostgresStore(url, pool_size=settings["database.pool_size"], timeout=float(settings["database.timeout"]))
