"""One SQLAlchemy engine run from worker threads, for SQLite and PostgreSQL alike.

SQLite gets exactly one connection and one thread: SQLite has one writer at a time anyway, and
one thread hop per transaction (instead of one per statement, as aiosqlite does) is what makes
it fast. PostgreSQL gets a pool of connections and as many threads. Each call of :meth:`run`
is one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import os
import queue
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.pool import StaticPool

from herald.adapters.store.revision import MIGRATIONS, head_revision
from herald.domain import urgency
from herald.domain.errors import ConfigurationError, ServiceUnavailable

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's own busy handler alone
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")
_MIGRATIONS = MIGRATIONS
_UPGRADE_LOCK = threading.Lock()
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_TX_ATTEMPTS = 5
_RECONNECT_ATTEMPTS = 3  # a dead pooled connection, then a server not back yet: then give up
_MIGRATION_LOCK_KEY = 0x68_65_72_61_6C_64  # "herald": the advisory lock held while migrating


class SerialExecutor(Executor):
    """One thread that runs what it is given by urgency (:mod:`herald.domain.urgency`), in
    order of submission within one urgency.

    SQLite's single connection lives on this thread. A ``ThreadPoolExecutor`` would run work
    strictly first come, first served: an API request's transaction would wait behind every
    result commit and routing pass already queued. Here it waits at most for the transaction
    that is running. Work already running is never interrupted.
    """

    def __init__(self, name: str) -> None:
        # A heap under a plain lock, and one token per item in a C SimpleQueue to sleep on:
        # queue.PriorityQueue's Python-level Condition cost ~3 % of the event loop's CPU.
        self._heap: list[tuple[int, int, Future[Any] | None, Callable[[], Any] | None]] = []
        self._lock = threading.Lock()
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._order = itertools.count()
        self._closed = False
        # A daemon thread: a process that exits without closing its Database must not hang on
        # it; SQLite's transactions keep the file consistent whatever the thread was doing.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit_at(self, urgency_level: int, fn: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        future: Future[T] = Future()
        self._push((urgency_level, next(self._order), future, fn))
        return future

    def _push(self, item: tuple[int, int, Future[Any] | None, Callable[[], Any] | None]) -> None:
        with self._lock:
            heapq.heappush(self._heap, item)
        self._tokens.put(None)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self.submit_at(urgency.current(), functools.partial(fn, *args, **kwargs))

    def _work(self) -> None:
        while True:
            self._tokens.get()  # one per item pushed: the heap is not empty now
            with self._lock:
                _, _, future, fn = heapq.heappop(self._heap)  # the most urgent, then the oldest
            if future is None or fn is None:
                return
            if not future.set_running_or_notify_cancel():
                continue  # its caller went away before it started
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self._push((sys.maxsize, next(self._order), None, None))  # after everything queued
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()


def _normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


_CLOSE_GRACE_SECONDS = 10.0


def _open_lock_file(database: str | None) -> int | None:
    """The lock file beside a SQLite database file (``herald.db`` → ``herald.db.lock``)."""
    if fcntl is None or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.open(database + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _send_lists_binary(dbapi_conn: Any) -> None:
    """Send Python lists (the array parameters of :mod:`pg_batch`) in PostgreSQL's binary
    format. psycopg's text format quotes and escapes every element in Python: 2.5 ms for the
    200 JSON contents of one routing page, 16% of the serve process in the scale-out drain;
    binary is ~25 us for the same list."""
    from psycopg.types.array import ListBinaryDumper  # noqa: PLC0415 - PostgreSQL only

    dbapi_conn.adapters.register_dumper(list, ListBinaryDumper)


class Database:
    def __init__(self, url: str, *, pool_size: int = 8, sqlite_synchronous: str = "NORMAL") -> None:
        self.url = _normalise_url(url)
        self._lock_fd: int | None = None
        self._conn: Connection | None = None  # SQLite: the one connection, used on its thread only
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
                # a read transaction to a write one. On the driver's own cursor: through
                # exec_driver_sql it was a tenth of a small transaction's time on this thread.
                try:
                    raw = conn.connection.driver_connection
                    assert raw is not None  # a live connection: SQLAlchemy is beginning on it
                    raw.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as err:  # wrapped as SQLAlchemy would, for _tx
                    raise exc.DBAPIError.instance(
                        "BEGIN IMMEDIATE", None, err, sqlite3.Error, connection_invalidated=False
                    ) from err

            self._executor: Executor = SerialExecutor("herald-sqlite")
            self._lock_fd = _open_lock_file(self.engine.url.database)
        else:
            try:
                # No pre-ping: it was one more round trip per transaction (a wait for the server
                # and then for this thread, on a busy machine, before every claim and commit).
                # A connection found dead by the transaction's own first statement is retried
                # instead (see _tx).
                self.engine = create_engine(self.url, pool_size=pool_size, max_overflow=0, pool_recycle=1800)
            except ModuleNotFoundError:
                raise ConfigurationError(
                    "database.url is PostgreSQL but psycopg is not installed: pip install 'herald[postgres]'"
                ) from None
            @event.listens_for(self.engine, "connect")
            def _binary_arrays(dbapi_conn: Any, _record: Any) -> None:
                _send_lists_binary(dbapi_conn)

            self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="herald-pg")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _tx(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction; translate driver errors at this boundary.

        A deadlock or serialisation failure (PostgreSQL rolls the transaction back) is run
        again: every ``fn`` is a function of its connection only. So is a transaction whose
        connection turned out dead before it committed (a server restart, an idle connection
        cut): nothing of it was committed, and the pool, which then discards every connection
        older than the failure, gives a fresh one. A connection lost during the commit itself
        is not retried (the commit may have happened). Lost or refused connections that stay
        lost become ServiceUnavailable.
        """
        attempt = 0
        while True:
            attempt += 1
            committing = False
            try:
                if self.is_sqlite:
                    conn = self._sqlite_connection()
                    with self._writer_lock(), conn.begin():
                        return fn(conn)
                with self.engine.begin() as conn:
                    result = fn(conn)
                    committing = True
                return result
            except exc.DBAPIError as err:
                if attempt < _TX_ATTEMPTS and getattr(err.orig, "sqlstate", None) in _RETRY_SQLSTATES:
                    time.sleep(random.uniform(0.001, 0.01 * attempt))  # noqa: S311 - jitter, not crypto
                    continue
                if err.connection_invalidated and not committing and attempt < _RECONNECT_ATTEMPTS:
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

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """SQLite, several herald processes on one file: take turns through a lock file.

        Every transaction here is a write (``BEGIN IMMEDIATE``). Without this, a process that
        finds the file locked is put to sleep by SQLite's busy handler for 1, 2, 5, 10, 15,
        20, 25 … ms, whenever the lock is released meanwhile; with ``serve`` and its worker
        children writing hundreds of times a second, those sleeps were the limit. ``flock``
        makes the waiter sleep in the kernel until the holder lets go. Uncontended (one
        process) it costs two system calls a transaction.
        """
        fd = self._lock_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _sqlite_connection(self) -> Connection:
        """The SQLite thread's one connection, kept open between transactions (checking it out
        of the pool per transaction cost as much as a small transaction's statements)."""
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._conn = self.engine.connect()
        return conn

    def _dispose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def run(self, fn: Callable[[Connection], T]) -> T:
        call = functools.partial(self._tx, fn)
        if isinstance(self._executor, SerialExecutor):
            return await asyncio.wrap_future(self._executor.submit_at(urgency.current(), call))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

    async def run_outside_transaction(self, sql: str) -> None:
        """Run one statement that cannot run in a transaction (``VACUUM``), in autocommit."""

        def op() -> None:
            try:
                with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql(sql)
            except (exc.OperationalError, exc.InterfaceError) as err:
                raise ServiceUnavailable(f"database unavailable: {type(err.orig).__name__}") from err

        await asyncio.get_running_loop().run_in_executor(self._executor, op)

    def upgrade(self) -> None:
        """Bring the schema to the newest alembic revision.

        Every herald process upgrades at start, so starts race: on PostgreSQL a transaction-
        scoped advisory lock lets one process migrate while the others wait and then find the
        schema current; SQLite's ``BEGIN IMMEDIATE`` does the same. Alembic keeps its context
        in module globals, so upgrades inside one process are serialised as well.
        """
        if self.current_revision() == head_revision():
            return  # the common case (every start but the first): no need to load alembic
        from alembic import command  # noqa: PLC0415 - only when there is something to migrate
        from alembic.config import Config  # noqa: PLC0415

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

    def current_revision(self) -> str | None:
        """The schema's alembic revision; None for a database herald has not set up yet."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except exc.OperationalError as err:
            if self.is_sqlite and "no such table" in str(err):
                return None
            raise ServiceUnavailable(f"database unavailable: {type(err.orig).__name__}") from err
        except exc.ProgrammingError as err:  # PostgreSQL: relation "alembic_version" does not exist
            if getattr(err.orig, "sqlstate", None) == "42P01":
                return None
            raise
        except exc.InterfaceError as err:
            raise ServiceUnavailable(f"database unavailable: {type(err.orig).__name__}") from err

    @property
    def display_url(self) -> str:
        """The URL without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        """Close everything from synchronous code (a command that ran without an event loop)."""
        self._dispose()
        self._executor.shutdown(wait=True)

    async def upgrade_async(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.upgrade)

    async def close(self) -> None:
        if isinstance(self._executor, SerialExecutor):  # SQLite: disposal queues after the work
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._dispose)
            self._executor.shutdown(wait=False)
            return
        # PostgreSQL: transactions of cancelled callers may still be running on pool threads.
        # Dispose only once they have returned their connections, or a connection checked in
        # after the disposal would stay open in a discarded pool until the garbage collector.
        await asyncio.to_thread(self._drain_then_dispose)

    def _drain_then_dispose(self) -> None:
        waiter = threading.Thread(
            target=self._executor.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True
        )
        waiter.start()
        waiter.join(_CLOSE_GRACE_SECONDS)  # bounded: a query on a dead link must not hang a stop
        self._dispose()
