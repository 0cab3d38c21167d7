"""SQLite writers of several processes take turns through ``<database>.lock`` (flock)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from herald.adapters.store.database import Database
from herald.domain.errors import ServiceUnavailable


def test_a_transaction_waits_for_the_lock_file_and_runs_once_it_is_free(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'herald.db'}")
    lock_path = tmp_path / "herald.db.lock"
    assert lock_path.exists()  # created beside the database
    other = os.open(lock_path, os.O_RDWR)  # another process's writer, as flock sees it
    fcntl.flock(other, fcntl.LOCK_EX)
    done = threading.Event()
    result: list[int] = []

    def write() -> None:
        async def main() -> None:
            result.append(await db.run(lambda c: c.execute(text("SELECT 41 + 1")).scalar_one()))
            await db.close()

        asyncio.run(main())
        done.set()

    worker = threading.Thread(target=write)
    worker.start()
    try:
        assert not done.wait(0.5)  # held elsewhere: the transaction has not begun
        fcntl.flock(other, fcntl.LOCK_UN)
        assert done.wait(10)  # let go: it runs at once
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
        worker.join(10)
    assert result == [42]


def test_memory_databases_have_no_lock_file(tmp_path: Path) -> None:
    db = Database("sqlite://")
    assert db._lock_fd is None
    assert list(tmp_path.iterdir()) == []


def test_a_database_locked_by_a_writer_outside_herald_is_reported_unavailable(tmp_path: Path) -> None:
    # Another program holds SQLite's own write lock (it knows nothing of the lock file): the
    # BEGIN IMMEDIATE herald runs on the driver's cursor fails after the busy timeout, and that
    # comes out as ServiceUnavailable (a 503 in the API), not as a raw driver error.
    path = tmp_path / "herald.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    outsider = sqlite3.connect(path, isolation_level=None)

    async def main() -> None:
        await db.run(lambda c: c.exec_driver_sql("PRAGMA busy_timeout = 50"))  # herald's one connection
        outsider.execute("BEGIN IMMEDIATE")
        with pytest.raises(ServiceUnavailable, match="database unavailable: OperationalError"):
            await db.run(lambda c: c.execute(text("SELECT 1")).scalar_one())
        outsider.execute("ROLLBACK")
        assert await db.run(lambda c: c.execute(text("SELECT 2")).scalar_one()) == 2  # and recovers
        await db.close()

    try:
        asyncio.run(main())
    finally:
        outsider.close()
