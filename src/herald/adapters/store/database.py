"""One SQLAlchemy engine run from worker threads, for SQLite and PostgreSQL alike.

SQLite gets exactly one connection and one thread: SQLite has one writer at a time anyway, and
one thread hop per transaction (instead of one per statement, as aiosqlite does) is what makes
it fast. PostgreSQL gets a pool of connections and as many threads. Each call of :meth:`run`
is one transaction.
"""

from __future__ import annotations

import asyncio
import functools
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.pool import StaticPool

from herald.domain.errors import ConfigurationError, ServiceUnavailable

T = TypeVar("T")
_MIGRATIONS = Path(__file__).parent / "migrations"
_UPGRADE_LOCK = threading.Lock()
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_TX_ATTEMPTS = 5
_MIGRATION_LOCK_KEY = 0x68_65_72_61_6C_64  # "herald": the advisory lock held while migrating


def _normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


class Database:
    def __init__(self, url: str, *, pool_size: int = 8, sqlite_synchronous: str = "NORMAL") -> None:
        self.url = _normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = create_engine(
                self.url,
                connect_args={"check_same_thread": False, "isolation_level": None, "timeout": 30},
                poolclass=StaticPool,
            )
            sync = sqlite_synchronous

            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                # Switching a fresh file to WAL needs an exclusive lock, and SQLite may answer
                # "locked" at once (without its busy handler) when processes start together.
                for attempt in range(200):
                    try:
                        cur.execute("PRAGMA journal_mode=WAL")
                        break
                    except sqlite3.OperationalError as err:
                        if "locked" not in str(err) or attempt == 199:
                            raise
                        time.sleep(0.05)
                cur.execute(f"PRAGMA synchronous={sync}")
                cur.execute("PRAGMA foreign_keys=OFF")
                cur.close()

            @event.listens_for(self.engine, "begin")
            def _begin(conn: Connection) -> None:
                # Take the write lock up front so that two processes never deadlock upgrading
                # a read transaction to a write one.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-sqlite")
        else:
            try:
                self.engine = create_engine(
                    self.url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True, pool_recycle=1800
                )
            except ModuleNotFoundError:
                raise ConfigurationError(
                    "database.url is PostgreSQL but psycopg is not installed: pip install 'herald[postgres]'"
                ) from None
            self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="herald-pg")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _tx(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction; translate driver errors at this boundary.

        A deadlock or serialisation failure (PostgreSQL rolls the transaction back) is run
        again: every ``fn`` is a function of its connection only. Lost or refused connections
        become ServiceUnavailable; the pool replaces a dead connection on next checkout.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.engine.begin() as conn:
                    return fn(conn)
            except exc.DBAPIError as err:
                if attempt < _TX_ATTEMPTS and getattr(err.orig, "sqlstate", None) in _RETRY_SQLSTATES:
                    time.sleep(random.uniform(0.001, 0.01 * attempt))  # noqa: S311 - jitter, not crypto
                    continue
                if isinstance(err, exc.OperationalError | exc.InterfaceError):
                    if self.is_sqlite and "locked" not in str(err):
                        raise  # SQLite reports SQL mistakes as OperationalError too
                    raise ServiceUnavailable(f"database unavailable: {type(err.orig).__name__}") from err
                if err.connection_invalidated:
                    raise ServiceUnavailable("database connection lost") from err
                raise
            except exc.TimeoutError as err:  # no pooled connection came free in time
                raise ServiceUnavailable("database busy: no connection free in the pool") from err

    async def run(self, fn: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._tx, fn))

    def upgrade(self) -> None:
        """Bring the schema to the newest alembic revision.

        Every herald process upgrades at start, so starts race: on PostgreSQL a transaction-
        scoped advisory lock lets one process migrate while the others wait and then find the
        schema current; SQLite's ``BEGIN IMMEDIATE`` does the same. Alembic keeps its context
        in module globals, so upgrades inside one process are serialised as well.
        """
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        try:
            with _UPGRADE_LOCK, self.engine.begin() as conn:
                if not self.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except (exc.OperationalError, exc.InterfaceError) as err:
            if self.is_sqlite:
                raise
            raise ServiceUnavailable(f"database unavailable: {type(err.orig).__name__}") from err

    async def upgrade_async(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.upgrade)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.engine.dispose)
        self._executor.shutdown(wait=False)
