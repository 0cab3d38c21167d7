"""Issue 21 as a user runs it: ``herald`` processes on PostgreSQL (+ Redis) and a Kafka-protocol
broker (Tansu, tests/support/kafka.py), killed with SIGKILL under load.

1. Two ``herald worker`` share the events topic's partitions in one group; one is killed
   mid-stream: every event is accepted exactly once (what the dead one had accepted without
   committing comes again to the survivor and is absorbed by its idempotency key).
2. The cluster: 2 x ``herald api``, 2 x ``herald worker``, ``herald scheduler`` with
   ``queue.url = kafka://`` and ``events.kafka_url``; 5,000 notifications over HTTP and 2,000
   events from Kafka; a worker killed under load. Lost 0, every delivery final, duplicates no
   more than the sends in flight at the kill (ambiguous sends).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.contract.conftest import REDIS_URL, pg_execute, pg_url_for, require_postgres
from tests.support.db import FINAL, Db
from tests.support.kafka import TansuBroker, produce, unique_name
from tests.support.process import HeraldProcess, herald_cli
from tests.support.smtp import SmtpTestServer

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(900)]


@pytest.fixture
def schema() -> Iterator[str]:
    require_postgres()
    name = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{name}"')
    yield name
    pg_execute(f'DROP SCHEMA "{name}" CASCADE')


def _config(cwd: Path, schema: str, broker: TansuBroker, smtp_port: int, *, queue: str, topic: str) -> None:
    prefix = unique_name("c")
    queue_table = (
        f'url = "{broker.url}"\nprefix = "{prefix}"\nkafka_partitions = 4\n' if queue == "kafka" else ""
    )
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "{pg_url_for(schema)}"
pool_size = 4

[cache]
url = "{REDIS_URL}"
prefix = "{prefix}:"

[queue]
{queue_table}lease_seconds = 15
idle_wait_seconds = 0.2
kafka_session_timeout_seconds = 3

[events]
kafka_url = "{broker.url}"
kafka_topic = "{topic}"
kafka_group = "{prefix}-events"
kafka_partitions = 6
kafka_session_timeout_seconds = 3

[scheduler]
leader_ttl_seconds = 3

[providers.smtp]
host = "127.0.0.1"
port = {smtp_port}
from_address = "noreply@herald.test"
timeout = 10

[channels.email]
providers = ["smtp"]
concurrency = 16

[logging]
level = "info"
json = true
"""
    )


async def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _assigned(proc: HeraldProcess) -> list[int]:
    """The events partitions the process held last (its JSON log)."""
    last: list[int] = []
    for line in proc.log.read_text(errors="replace").splitlines():
        if '"events.kafka_assigned"' in line:
            last = orjson.loads(line)["partitions"]
    return last


async def _setup_rule(c: httpx.AsyncClient) -> None:
    assert (await c.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
    template = {
        "category": "transactional",
        "channels": {"email": {"subject": "Order {{ data.order }}", "text": "ok"}},
    }
    assert (await c.put("/v1/templates/order_placed", json=template)).status_code == 200
    rule = {"template": "order_placed", "channels": ["email"]}
    assert (await c.put("/v1/rules/order_placed", json=rule)).status_code == 200


def _events(n: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    return [
        (f"order-{i}".encode(), orjson.dumps({"type": "order_placed", "to": "u1", "data": {"order": i}}))
        for i in range(start, start + n)
    ]


async def test_two_workers_split_the_partitions_and_a_kill_loses_nothing(
    tmp_path: Path, schema: str, smtp_server: SmtpTestServer
) -> None:
    broker = TansuBroker(tmp_path).start()
    topic = unique_name("events")
    _config(tmp_path, schema, broker, smtp_server.port, queue="sql", topic=topic)
    procs: list[HeraldProcess] = []
    db = Db(schema)
    try:
        created = herald_cli(tmp_path, "keys", "create", "--scope", "admin")
        key = created.stdout.strip()
        assert key.startswith("hk_"), created.stderr[-3000:]
        api = HeraldProcess(tmp_path, key, role="api").start()
        workers = [HeraldProcess(tmp_path, key, role="worker", name=f"worker{i}").start() for i in range(2)]
        procs = [api, *workers]
        async with httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {key}"}) as c:
            await _setup_rule(c)
        await _wait(lambda: all(_assigned(w) for w in workers), 60, "both workers to hold partitions")
        a, b = (set(_assigned(w)) for w in workers)
        assert a and b and not a & b and a | b == set(range(6)), (a, b)

        total = 2_000
        await produce(broker.bootstrap, topic, _events(total))
        await _wait(lambda: int(db.one("SELECT count(*) FROM notifications")) >= 400, 120, "400 accepted")  # type: ignore[call-overload]
        workers[0].kill()  # kill -9 mid-stream: its uncommitted batch goes to the survivor
        await _wait(lambda: set(_assigned(workers[1])) == set(range(6)), 60, "the survivor to take over")
        await _wait(
            lambda: int(db.one("SELECT count(*) FROM notifications")) >= total,
            180,
            "every event accepted",  # type: ignore[call-overload]
        )
        await asyncio.sleep(2.0)  # anything accepted twice would show now
        notified = int(db.one("SELECT count(*) FROM notifications"))  # type: ignore[call-overload]
        events = int(db.one("SELECT count(*) FROM events WHERE status = 'accepted'"))  # type: ignore[call-overload]
        orders = int(db.one("SELECT count(DISTINCT body) FROM events WHERE status = 'accepted'"))  # type: ignore[call-overload]
        assert (notified, events, orders) == (total, total, total), "lost or accepted twice"
    finally:
        for p in procs:
            p.stop()
        db.close()
        broker.stop()


async def test_cluster_on_kafka_survives_a_worker_kill_lost_zero(
    tmp_path: Path, schema: str, smtp_server: SmtpTestServer
) -> None:
    broker = TansuBroker(tmp_path).start()
    topic = unique_name("events")
    _config(tmp_path, schema, broker, smtp_server.port, queue="kafka", topic=topic)
    procs: list[HeraldProcess] = []
    clients: list[httpx.AsyncClient] = []
    db = Db(schema)
    notes, n_events = 5_000, 2_000
    in_flight = 0
    try:
        created = herald_cli(tmp_path, "keys", "create", "--scope", "admin")
        key = created.stdout.strip()
        assert key.startswith("hk_"), created.stderr[-3000:]
        apis = [HeraldProcess(tmp_path, key, role="api", name=f"api{i}").start() for i in range(2)]
        workers = [HeraldProcess(tmp_path, key, role="worker", name=f"worker{i}").start() for i in range(2)]
        scheduler = HeraldProcess(tmp_path, key, role="scheduler").start()
        procs = [*apis, *workers, scheduler]
        headers = {"Authorization": f"Bearer {key}"}
        clients += [httpx.AsyncClient(base_url=a.url, headers=headers, timeout=60) for a in apis]
        await _setup_rule(clients[0])

        await produce(broker.bootstrap, topic, _events(n_events))
        item = {
            "to": "u1",
            "content": {"subject": "n", "text": "body"},
            "channels": ["email"],
            "category": "system",
        }
        for i in range(notes // 1000):
            r = await clients[i % 2].post("/v1/notifications/batch", json={"notifications": [item] * 1000})
            assert r.status_code == 202 and r.json()["accepted"] == 1000, r.text
        received = smtp_server.handler.received

        await _wait(lambda: len(received) >= 500, 300, "500 sends")  # under load: the kill
        victim = workers[0]
        assert victim.proc is not None
        victim.kill()
        in_flight = int(
            db.one(  # type: ignore[arg-type]
                "SELECT count(*) FROM deliveries WHERE status = 'sending' AND lease_owner LIKE %s",
                f"worker-{victim.proc.pid}-%",
            )
        )
        total = notes + n_events

        def all_final() -> bool:
            return int(db.one(f"SELECT count(*) FROM deliveries WHERE status IN {FINAL}")) >= total  # type: ignore[call-overload]

        await _wait(all_final, 720, "every delivery final")
        await asyncio.sleep(1.0)
        ready = (await clients[0].get("/readyz")).json()
        assert ready["status"] == "ready"
    finally:
        for c in clients:
            await c.aclose()
        for p in procs:
            p.stop()
        try:
            statuses = dict(
                db.conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
            )
            notified = db.one("SELECT count(*) FROM notifications")
            ambiguous = db.one("SELECT count(*) FROM attempts WHERE ambiguous")
        finally:
            db.close()
            broker.stop()

    counts = collections.Counter(smtp_server.handler.delivery_ids())
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    lost = total - len(counts)
    print(
        f"\nkafka cluster: notifications={notified} received_unique={len(counts)} lost={lost} "
        f"duplicated={duplicates} ambiguous={ambiguous} in_flight_at_worker_kill={in_flight} "
        f"statuses={statuses}"
    )
    assert notified == total
    assert statuses == {"sent": total}
    assert lost == 0
    assert duplicates <= in_flight
