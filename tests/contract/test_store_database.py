"""The Store port's contract: the database under it (start, lost connections, concurrent
migrations, deadlocks), on every adapter (memory, sqlite, postgres).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore
from herald.domain.errors import ServiceUnavailable
from tests.contract.conftest import (
    SqlBackend,
    make_user,
    pg_execute,
    pg_url_for,
)

# Lifecycle ---------------------------------------------------------------------------------------


async def test_ping_and_start_twice(store: SqlStore) -> None:
    await store.ping()
    await store.start()  # the schema is current: a second upgrade changes nothing
    await store.ping()


async def test_unreachable_postgres_is_service_unavailable() -> None:
    store = SqlStore(Database("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"))
    try:
        with pytest.raises(ServiceUnavailable):
            await store.start()
        with pytest.raises(ServiceUnavailable):
            await store.ping()
        with pytest.raises(ServiceUnavailable):
            await store.get_user("u1")
    finally:
        await store.close()


async def test_connection_lost_mid_transaction_is_service_unavailable_then_recovers(
    backend: SqlBackend,
) -> None:
    if backend.name != "postgres":
        pytest.skip("a server connection to lose exists on PostgreSQL only")
    from sqlalchemy import text

    with pytest.raises(ServiceUnavailable):
        await backend.store.db.run(lambda c: c.execute(text("SELECT pg_terminate_backend(pg_backend_pid())")))
    # Every pooled connection killed from outside, as a server restart does:
    await asyncio.gather(*(backend.store.ping() for _ in range(4)))
    killed = pg_execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{backend.schema}'"
    )
    assert killed
    # The pool notices the dead connections and reconnects on its own.
    await backend.store.ping()
    assert await backend.store.get_user("nobody") is None


async def test_a_transaction_on_a_connection_cut_while_idle_is_run_again_once(backend: SqlBackend) -> None:
    """No pre-ping: a pooled connection the server cut while it was idle is found dead by the
    transaction's first statement; the transaction runs again on a fresh connection and its
    writes are applied once."""
    if backend.name != "postgres":
        pytest.skip("a server connection to lose exists on PostgreSQL only")
    store = backend.store
    await asyncio.gather(*(store.ping() for _ in range(4)))  # connections idle in the pool
    assert pg_execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{backend.schema}'"
    )
    await store.put_user(make_user())  # no ServiceUnavailable: run again on a new connection
    got = await store.get_user("u1")
    assert got is not None and got.email == make_user().email
    assert pg_execute(f'SELECT count(*) FROM "{backend.schema}".users') == [(1,)]


_START = """
import asyncio, sys, time
from herald.adapters.store.database import Database
from herald.adapters.store.sql import SqlStore

async def main() -> None:
    store = SqlStore(Database(sys.argv[1]))
    await asyncio.sleep(float(sys.argv[3]) - time.time())  # all start at the same instant
    await store.start()
    await store.put_setting_if_absent("started", sys.argv[2])
    await store.close()

asyncio.run(main())
"""


async def test_many_processes_starting_at_once_migrate_once(backend: SqlBackend, tmp_path: Path) -> None:
    """Every herald process runs the migration at start; on a fresh database they race."""
    if backend.name == "memory":
        pytest.skip("an in-memory database belongs to one process")
    schema = None
    if backend.name == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        schema = f"herald_test_{uuid.uuid4().hex[:16]}"
        pg_execute(f'CREATE SCHEMA "{schema}"')
        url = pg_url_for(schema)
    try:
        at = str(time.time() + 2.0)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", _START, url, str(i), at, stderr=asyncio.subprocess.PIPE
            )
            for i in range(4)
        ]
        for p in procs:
            _, err = await asyncio.wait_for(p.communicate(), 60)
            assert p.returncode == 0, err.decode()[-2000:]
        # and threads of one process starting stores at once
        stores = [SqlStore(Database(url)) for _ in range(3)]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.start() for s in stores)), 60)
            assert await stores[2].get_setting("started") in {"0", "1", "2", "3"}
        finally:
            for s in stores:
                await s.close()
    finally:
        if schema is not None:
            pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_deadlocked_transaction_is_run_again(backend: SqlBackend) -> None:
    if backend.name != "postgres":
        pytest.skip("SQLite has one writer: no deadlocks")
    import threading

    from sqlalchemy import Connection, text

    store = backend.store
    await store.put_setting_if_absent("a", "0")
    await store.put_setting_if_absent("b", "0")
    barrier = threading.Barrier(2, timeout=10)
    runs = {"ab": 0, "ba": 0}

    def locker(first: str, second: str) -> Callable[[Connection], str]:
        def op(c: Connection) -> str:
            runs[first + second] += 1
            c.execute(
                text("UPDATE settings SET value = value || :v WHERE name = :n"), {"v": first, "n": first}
            )
            if runs[first + second] == 1:
                barrier.wait()  # both hold their first row: each now waits for the other's
            c.execute(
                text("UPDATE settings SET value = value || :v WHERE name = :n"), {"v": first, "n": second}
            )
            return first

        return op

    # deadlock_timeout (1 s by default) passes, PostgreSQL aborts one; it runs again and both finish.
    done = await asyncio.wait_for(
        asyncio.gather(store.db.run(locker("a", "b")), store.db.run(locker("b", "a"))), 30
    )
    assert sorted(done) == ["a", "b"]
    assert sorted(runs.values()) == [1, 2]
    assert len(await store.get_setting("a") or "") == len(await store.get_setting("b") or "") == 3
