"""SQLite writers of several processes take turns through ``<database>.lock`` (flock)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path

from sqlalchemy import text

from herald.adapters.store.database import Database


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
