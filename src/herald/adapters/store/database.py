"""One SQLAlchemy engine run from worker threads, for SQLite and PostgreSQL alike.

SQLite gets exactly one connection and one thread: SQLite has one writer at a time anyway, and
one thread hop per transaction (instead of one per statement, as aiosqlite does) is what makes
it fast. PostgreSQL gets a pool of connections and as many threads. Each call of :meth:`run`
is one transaction.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.pool import StaticPool

from herald.domain.errors import ConfigurationError, ServiceUnavailable

T = TypeVar("T")
_MIGRATIONS = Path(__file__).parent / "migrations"


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
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA synchronous={sync}")
                cur.execute("PRAGMA busy_timeout=30000")
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
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except (exc.OperationalError, exc.InterfaceError) as err:
            if self.is_sqlite and "locked" not in str(err):
                raise
            raise ServiceUnavailable(f"database unavailable: {type(err.orig).__name__}") from err
        except exc.DBAPIError as err:
            if err.connection_invalidated:
                raise ServiceUnavailable("database connection lost") from err
            raise

    async def run(self, fn: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._tx, fn))

    def upgrade(self) -> None:
        """Bring the schema to the newest alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    async def upgrade_async(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.upgrade)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.engine.dispose)
        self._executor.shutdown(wait=False)
