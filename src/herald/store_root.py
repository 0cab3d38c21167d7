"""The store part of the composition root, importable without the rest of it.

Admin commands (``herald keys``, ``herald db upgrade``, ``herald users import``) need only the
database: building the whole container would import every adapter and the web framework, and
the CLI must start at once. :mod:`herald.bootstrap` builds its store here too.
"""

from __future__ import annotations

from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore
from herald.config import Settings


def open_database(url: str, *, pool_size: int = 1) -> Database:
    return Database(url, pool_size=pool_size)


def build_store(settings: Settings, *, pool_size: int | None = None) -> SqlStore:
    # A broker queue needs the outbox: rows written with every change that makes a delivery claimable.
    return SqlStore(
        open_database(settings.database.url, pool_size=pool_size or settings.database.pool_size),
        outbox=settings.queue.url != "sql",
    )
