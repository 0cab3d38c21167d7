"""``herald keys create``'s direct path (adapters/store/keys_fast.py) writes the row SqlStore
writes, SqlStore reads it back, and it writes nothing (so that the full path migrates and
writes) whenever the schema is not the newest one or the URL is not one it handles."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from herald.adapters.store.database import Database
from herald.adapters.store.keys_fast import sqlite_file, write_api_key
from herald.adapters.store.sql import SqlStore
from herald.domain.models import ApiKey
from herald.services.api_keys import generate_key, hash_key
from tests.contract.conftest import pg_execute, pg_url_for, require_postgres

COLUMNS = "name, scopes, created_at, revoked_at, last_used_at"


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database at the newest schema (created by SqlStore, as herald does)."""
    schema = None
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'herald.db'}"
    else:
        require_postgres()
        schema = f"herald_test_{uuid.uuid4().hex[:16]}"
        pg_execute(f'CREATE SCHEMA "{schema}"')
        db_url = pg_url_for(schema)
    store = SqlStore(Database(db_url))
    await store.start()
    await store.close()
    try:
        yield db_url
    finally:
        if schema is not None:
            pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


async def _rows(store: SqlStore, *ids: str) -> list[tuple[Any, ...]]:
    def op(c: Any) -> list[tuple[Any, ...]]:
        return [
            tuple(c.execute(text(f"SELECT {COLUMNS} FROM api_keys WHERE id = :id"), {"id": i}).one())
            for i in ids
        ]

    return await store.db.run(op)


async def test_the_direct_row_equals_the_stores_and_the_store_reads_it(url: str) -> None:
    now = time.time()
    raw_a, by_store = generate_key("deploy", {"send", "admin"}, now)
    raw_b, direct = generate_key("deploy", {"admin", "send"}, now)
    store = SqlStore(Database(url))
    await store.start()
    try:
        await store.create_api_key(by_store, hash_key(raw_a))
        assert write_api_key(url, direct, hash_key(raw_b)) is True
        a, b = await _rows(store, by_store.id, direct.id)
        assert a == b == ("deploy", "admin,send", now, None, None)
        if store.db.is_sqlite:  # the same storage classes, not only equal values
            types = await store.db.run(
                lambda c: c.execute(
                    text("SELECT DISTINCT typeof(name), typeof(scopes), typeof(created_at) FROM api_keys")
                ).all()
            )
            assert len(types) == 1
        assert await store.get_api_key(hash_key(raw_b)) == direct
        assert direct.id in {k.id for k in await store.list_api_keys()}
        revoked = await store.revoke_api_keys([direct.id], now=now + 1)
        assert [k.id for k in revoked] == [direct.id]
        assert await store.get_api_key(hash_key(raw_b)) is None
    finally:
        await store.close()


def _key() -> tuple[ApiKey, str]:
    raw, key = generate_key("x", {"admin"}, time.time())
    return key, hash_key(raw)


async def test_nothing_is_written_when_the_schema_is_not_the_newest(url: str) -> None:
    store = SqlStore(Database(url))
    await store.start()
    try:
        await store.db.run(lambda c: c.execute(text("UPDATE alembic_version SET version_num = '0001'")))
        key, key_hash = _key()
        assert write_api_key(url, key, key_hash) is False
        assert await store.get_api_key(key_hash) is None
        await store.db.run(lambda c: c.execute(text("DROP TABLE alembic_version")))
        assert write_api_key(url, key, key_hash) is False
        assert await store.get_api_key(key_hash) is None
    finally:
        await store.close()


def test_a_new_database_is_left_to_the_full_path(tmp_path: Path) -> None:
    key, key_hash = _key()
    missing = tmp_path / "new.db"
    assert write_api_key(f"sqlite:///{missing}", key, key_hash) is False
    assert not missing.exists()  # created (with its schema) by the full path, not here
    (tmp_path / "empty.db").touch()
    assert write_api_key(f"sqlite:///{tmp_path / 'empty.db'}", key, key_hash) is False


def test_unreachable_postgres_is_left_to_the_full_path() -> None:
    key, key_hash = _key()
    assert write_api_key("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2", key, key_hash) is False


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///herald.db", "herald.db"),
        ("sqlite:////var/lib/herald/herald.db", "/var/lib/herald/herald.db"),
        ("sqlite+pysqlite:///a.db", "a.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite:///a.db?mode=ro", None),
        ("sqlite:///a%20b.db", None),
        ("postgresql://h/db", None),
    ],
)
def test_sqlite_urls(url: str, path: str | None) -> None:
    assert sqlite_file(url) == path
