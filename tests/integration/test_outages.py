"""Issue 5: losing PostgreSQL or Redis mid-run. Requests that cannot be committed fail with a 503
problem+json (never a 202 that was not committed); processes reconnect on their own; nothing
accepted is lost."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from herald.testing import RecordingProvider
from tests.contract.conftest import PG_URL, REDIS_URL, pg_execute, require_postgres
from tests.support.herald import Running, make_settings, running_herald
from tests.support.tcp_proxy import TcpProxy
from tests.support.waits import eventually

MAIL = {"subject": "s", "text": "t"}


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    require_postgres()
    target = urlsplit(PG_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    yield proxy
    await proxy.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    require_postgres()
    schema = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


def _pg_url(port: int, schema: str) -> str:
    parts = urlsplit(PG_URL)
    user = parts.username or "postgres"
    return (
        f"postgresql://{user}@127.0.0.1:{port}{parts.path}"
        f"?options=-csearch_path%3D{schema}&application_name={schema}&connect_timeout=2"
    )


async def _send(h: Running, i: int, **extra: object) -> tuple[int, dict[str, object]]:
    body = {"to": "u1", "content": MAIL, "channels": ["email"], **extra}
    r = await h.client.post("/v1/notifications", json=body, headers={"Idempotency-Key": f"k-{i}"})
    return r.status_code, (r.json() if r.content else {})


async def test_postgres_lost_mid_run_503_then_reconnects_nothing_lost(
    tmp_path: Path, pg_proxy: TcpProxy, pg_schema: str
) -> None:
    rec = RecordingProvider("rec")
    settings = make_settings(
        tmp_path,
        database={"url": _pg_url(pg_proxy.port, pg_schema), "pool_size": 4},
        channels={"email": {"providers": ["rec"]}},
    )
    async with running_herald(settings, providers={"rec": rec}) as h:
        assert (await h.client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        accepted: list[str] = []
        for i in range(10):
            code, body = await _send(h, i)
            assert code == 202
            accepted.append(str(body["id"]))

        await pg_proxy.cut()
        outage_codes = []
        for i in range(10, 20):
            code, body = await _send(h, i)
            outage_codes.append(code)
            if code == 202:  # only if it really was committed (a pooled connection raced the cut)
                accepted.append(str(body["id"]))
            else:
                assert code == 503, body
                assert body["status"] == 503 and "database" in str(body["detail"]).lower()
        assert outage_codes.count(503) >= 8, outage_codes
        ready = await h.client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["content-type"].startswith(
            "application/problem+json"
        )

        await pg_proxy.restore()

        async def back() -> bool:
            code, body = await _send(h, 100)
            if code == 202:
                accepted.append(str(body["id"]))
            return code == 202

        await eventually(back, timeout=20)
        for i in range(20, 30):
            code, body = await _send(h, i)
            assert code == 202, body
            accepted.append(str(body["id"]))

        async def all_sent() -> bool:
            return len({m.notification_id for m in rec.sent}) >= len(set(accepted))

        await eventually(all_sent, timeout=30)
        sent = [m.notification_id for m in rec.sent]
        assert set(sent) == set(accepted)  # nothing lost, and nothing sent that was refused
        assert len(sent) == len(set(sent))  # and nothing twice
        # The requests refused during the outage were never committed: retrying them now creates them.
        code, _ = await _send(h, 15)
        assert code == 202


async def test_redis_lost_mid_run_readyz_503_then_reconnects_nothing_lost(
    tmp_path: Path, redis_proxy: TcpProxy
) -> None:
    rec = RecordingProvider("rec")
    prefix = uuid.uuid4().hex[:8]
    settings = make_settings(
        tmp_path,
        cache={"url": f"redis://127.0.0.1:{redis_proxy.port}/0"},
        channels={"email": {"providers": ["rec"]}},
    )
    async with running_herald(settings, providers={"rec": rec}) as h:
        uid = f"r-{prefix}"
        assert (await h.client.put(f"/v1/users/{uid}", json={"email": "r@example.com"})).status_code == 200
        assert (await h.client.get("/readyz")).json()["cache"] == "ok"
        await redis_proxy.cut()
        ready = await h.client.get("/readyz")
        assert ready.status_code == 503 and "cache" in ready.json()["detail"]
        # Accepting needs only the database: the 202 is committed, and the marketing budget
        # (Redis) is applied by the router once Redis answers again.
        ids = []
        for _ in range(3):
            r = await h.client.post(
                "/v1/notifications",
                json={"to": uid, "content": MAIL, "channels": ["email"], "category": "marketing"},
            )
            assert r.status_code == 202
            ids.append(r.json()["id"])
        assert rec.sent == []
        await redis_proxy.restore()

        async def all_sent() -> bool:
            return len(rec.sent) == 3

        await eventually(all_sent, timeout=20)
        assert sorted(m.notification_id for m in rec.sent) == sorted(ids)
        assert (await h.client.get("/readyz")).status_code == 200
