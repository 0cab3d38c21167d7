"""The store part of the composition root, importable without the rest of it.

Admin commands (``herald keys``, ``herald db upgrade``, ``herald users import``) need only the
database: building the whole container would import every adapter and the web framework, and
the CLI must start at once. :mod:`herald.bootstrap` builds its store here too. Importing this
module imports no database library: each function imports what it uses when it runs
(``herald keys create`` writes its one row without SQLAlchemy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herald.adapters.store.database import Database
    from herald.adapters.store.sql import SqlStore
    from herald.config import Settings
    from herald.domain.models import ApiKey


def open_database(url: str, *, pool_size: int = 1) -> Database:
    from herald.adapters.store.database import Database  # noqa: PLC0415 - SQLAlchemy: when used

    return Database(url, pool_size=pool_size)


def build_store(settings: Settings, *, pool_size: int | None = None) -> SqlStore:
    from herald.adapters.store.sql import SqlStore  # noqa: PLC0415

    # A broker queue needs the outbox: rows written with every change that makes a delivery claimable.
    return SqlStore(
        open_database(settings.database.url, pool_size=pool_size or settings.database.pool_size),
        outbox=settings.queue.url != "sql",
    )


def create_api_key_directly(database_url: str, key: ApiKey, key_hash: str) -> bool:
    """Write ``key`` through the plain driver (sqlite3 / psycopg, no SQLAlchemy) when the schema
    is the newest one; False when nothing was written and :meth:`SqlStore.create_api_key` on
    :func:`build_store` (which migrates first) must do it."""
    from herald.adapters.store.keys_fast import write_api_key  # noqa: PLC0415

    return write_api_key(database_url, key, key_hash)
