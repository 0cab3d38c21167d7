"""One API key row written through the plain database driver, without SQLAlchemy.

``herald keys create`` is run by hand and by deployment scripts before every start; importing
SQLAlchemy (and building herald's schema objects) was most of its time. This module writes the
same row :meth:`herald.adapters.store.sql.SqlStore.create_api_key` writes, through the stdlib
``sqlite3`` or psycopg, when it can be sure the schema is the newest one. Otherwise (no database
file yet, a schema to create or migrate, a URL form it does not parse, the server unreachable)
it writes nothing and says so: the caller then takes the full path, which migrates and reports
errors as every other command does. ``tests/unit/test_keys_fast.py`` checks the rows are equal.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from herald.adapters.store.revision import head_revision

if TYPE_CHECKING:
    from herald.domain.models import ApiKey

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

_INSERT = "INSERT INTO api_keys (id, name, key_hash, scopes, created_at) VALUES ({p}, {p}, {p}, {p}, {p})"


def sqlite_file(url: str) -> str | None:
    """The file of a ``sqlite:///path`` URL as SQLAlchemy reads it; None for anything else
    (memory databases, ``file:`` URIs, query options, escapes) — those take the full path."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            path = url[len(prefix) :]
            if not path or path == ":memory:" or path.startswith("file:") or any(c in path for c in "?%#"):
                return None
            return path
    return None


def postgres_conninfo(url: str) -> str | None:
    """A libpq URI for a PostgreSQL URL herald accepts; None for anything else."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return None


def _row(key: ApiKey, key_hash: str) -> tuple[str, str, str, str, float]:
    return (key.id, key.name, key_hash, ",".join(sorted(key.scopes)), key.created_at)


@contextlib.contextmanager
def _writer_lock(path: str) -> Iterator[None]:
    """The lock file every herald process on this SQLite file takes turns through
    (adapters/store/database.py): a key written while ``herald serve`` runs waits its turn."""
    if fcntl is None:
        yield
        return
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_sqlite(path: str, row: tuple[Any, ...]) -> bool:
    if not os.path.isfile(path):
        return False  # a new database: the full path creates its schema
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        try:
            current = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            return False  # no schema yet
        if current is None or current[0] != head_revision():
            return False  # a schema to migrate first
        with _writer_lock(path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_INSERT.format(p="?"), row)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return True
    finally:
        conn.close()


def _write_postgres(conninfo: str, row: tuple[Any, ...]) -> bool:
    try:
        import psycopg  # noqa: PLC0415 - PostgreSQL only
    except ImportError:
        return False  # the full path says what to install
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error:
        return False  # the full path reports an unreachable server as every command does
    try:
        try:
            current = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except psycopg.errors.UndefinedTable:
            return False
        if current is None or current[0] != head_revision():
            return False
        conn.execute(_INSERT.format(p="%s"), row)  # one statement: its own transaction
        return True
    except psycopg.Error:
        return False  # nothing was committed: the full path tries and reports it
    finally:
        conn.close()


def write_api_key(url: str, key: ApiKey, key_hash: str) -> bool:
    """Insert ``key`` as SqlStore.create_api_key would; False when this path wrote nothing and
    the full one must (a missing or older schema, a URL form not handled here)."""
    if head_revision() is None:
        return False
    row = _row(key, key_hash)
    path = sqlite_file(url)
    if path is not None:
        try:
            return _write_sqlite(path, row)
        except sqlite3.Error:
            return False  # nothing was committed: the full path tries and reports it
    conninfo = postgres_conninfo(url)
    if conninfo is not None:
        return _write_postgres(conninfo, row)
    return False
