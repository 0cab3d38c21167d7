"""Issue 5: a cluster on loopback — 2 ``herald api``, 3 ``herald worker``, 2 ``herald scheduler``
on PostgreSQL + Redis + RabbitMQ. 20,000 notifications over HTTP and 5,000 events published to
the broker; meanwhile kill -9 one worker, kill -9 the active scheduler, and restart RabbitMQ.
Afterwards: lost = 0, every delivery final, duplicates <= sends in flight at the worker kill."""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import aio_pika
import httpx
import orjson
import pytest

from tests.contract.conftest import REDIS_URL, pg_execute, pg_url_for, require_postgres
from tests.support.db import FINAL, Db
from tests.support.process import HeraldProcess, herald_cli
from tests.support.rabbitmq import RABBITMQ_URL, delete_everything, require_rabbitmq, unique_prefix
from tests.support.smtp import SmtpTestServer

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(900)]

HTTP_NOTIFICATIONS = 8_000  # load enough to kill a worker, the scheduler and the broker under
EVENTS = 2_000


def _config(cwd: Path, schema: str, prefix: str, smtp_port: int) -> None:
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "{pg_url_for(schema)}"
pool_size = 4

[cache]
url = "{REDIS_URL}"
prefix = "{prefix}:"

[queue]
url = "{RABBITMQ_URL}"
prefix = "{prefix}"
lease_seconds = 15
idle_wait_seconds = 0.2

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
level = "warning"
"""
    )


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None, "rabbitmqctl is needed to restart the broker"
    subprocess.run([ctl, *args], check=True, capture_output=True, timeout=120)


async def _publish_events(prefix: str, n: int) -> None:
    conn = await aio_pika.connect(RABBITMQ_URL)
    try:
        # A topic exchange drops what no queue is bound for: wait until herald's workers have
        # declared and bound their ingest queue (a producer would do the same at deployment).
        deadline = time.monotonic() + 60
        while True:
            probe = await conn.channel()
            try:
                await probe.declare_queue(f"{prefix}.events.ingest", passive=True)
                break
            except aio_pika.exceptions.ChannelClosed:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
            finally:
                if not probe.is_closed:
                    await probe.close()
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            f"{prefix}.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        for start in range(0, n, 500):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            orjson.dumps({"type": "order_shipped", "to": "u1", "data": {"order": i}}),
                            message_id=f"evt-{i}",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            content_type="application/json",
                        ),
                        routing_key="order_shipped",
                        mandatory=True,  # unroutable would be an error, not a silent drop
                    )
                    for i in range(start, min(start + 500, n))
                )
            )
    finally:
        await conn.close()


async def _wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_cluster_survives_worker_kill_scheduler_kill_and_broker_restart(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    require_postgres()
    await require_rabbitmq()
    schema, prefix = f"herald_test_{uuid.uuid4().hex[:16]}", unique_prefix()
    pg_execute(f'CREATE SCHEMA "{schema}"')
    _config(tmp_path, schema, prefix, smtp_server.port)
    procs: list[HeraldProcess] = []
    clients: list[httpx.AsyncClient] = []
    db = Db(schema)
    try:
        created = herald_cli(tmp_path, "keys", "create", "--scope", "admin")
        key = created.stdout.strip()
        assert key.startswith("hk_"), created.stderr
        apis = [HeraldProcess(tmp_path, key, role="api", name=f"api{i}").start() for i in range(2)]
        workers = [HeraldProcess(tmp_path, key, role="worker", name=f"worker{i}").start() for i in range(3)]
        schedulers = [
            HeraldProcess(tmp_path, key, role="scheduler", name=f"scheduler{i}").start() for i in range(2)
        ]
        procs = apis + workers + schedulers

        headers = {"Authorization": f"Bearer {key}"}
        clients += [httpx.AsyncClient(base_url=a.url, headers=headers, timeout=60) for a in apis]
        c0 = clients[0]
        assert (await c0.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        template = {
            "category": "transactional",
            "channels": {"email": {"subject": "Order {{ data.order }}", "text": "shipped"}},
        }
        assert (await c0.put("/v1/templates/order_shipped", json=template)).status_code == 200
        rule = {"template": "order_shipped", "channels": ["email"]}
        assert (await c0.put("/v1/rules/order_shipped", json=rule)).status_code == 200

        await _publish_events(prefix, EVENTS)
        item = {
            "to": "u1",
            "content": {"subject": "n", "text": "body"},
            "channels": ["email"],
            "category": "system",
        }
        for i in range(HTTP_NOTIFICATIONS // 1000):
            r = await clients[i % 2].post("/v1/notifications/batch", json={"notifications": [item] * 1000})
            assert r.status_code == 202 and r.json()["accepted"] == 1000, r.text
        received = smtp_server.handler.received

        # 1. kill -9 a worker mid-run, counting the sends it had in flight.
        await _wait(lambda: len(received) >= 2_000, 180, "2,000 sends")
        victim = workers[0]
        assert victim.proc is not None
        victim.kill()
        in_flight = int(
            db.one(  # type: ignore[arg-type]
                "SELECT count(*) FROM deliveries WHERE status = 'sending' AND lease_owner LIKE %s",
                f"worker-{victim.proc.pid}-%",
            )
        )

        # 2. kill -9 the active scheduler; the other one takes over.
        owner = str(db.one("SELECT owner FROM leases WHERE name = 'scheduler'"))
        active = next(s for s in schedulers if s.proc is not None and f"-{s.proc.pid}-" in owner)
        active.kill()
        killed_at = time.monotonic()
        await _wait(
            lambda: str(db.one("SELECT owner FROM leases WHERE name = 'scheduler'")) != owner, 60, "takeover"
        )
        takeover = time.monotonic() - killed_at

        # 3. restart RabbitMQ under load.
        await _wait(lambda: len(received) >= 5_000, 240, "5,000 sends")
        _rabbitmqctl("stop_app")
        await asyncio.sleep(2)
        # The API keeps accepting while the broker is away (the outbox holds the work).
        r = await clients[1].post("/v1/notifications", json={**item, "idempotency_key": "during-outage"})
        assert r.status_code == 202, r.text
        _rabbitmqctl("start_app")

        total = HTTP_NOTIFICATIONS + EVENTS + 1

        def all_final() -> bool:
            done = db.one(f"SELECT count(*) FROM deliveries WHERE status IN {FINAL}")
            return int(done) >= total  # type: ignore[call-overload]

        await _wait(all_final, 600, "every delivery final")
    finally:
        for c in clients:
            await c.aclose()
        for p in procs:
            p.stop()
        try:
            statuses = db.conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
            notified = db.one("SELECT count(*) FROM notifications")
            ambiguous = db.one("SELECT count(*) FROM attempts WHERE ambiguous")
        finally:
            db.close()
        pg_execute(f'DROP SCHEMA "{schema}" CASCADE')
        await delete_everything(prefix)

    counts = collections.Counter(smtp_server.handler.delivery_ids())
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    lost = total - len(counts)
    print(
        f"\ncluster: notifications={notified} received_unique={len(counts)} lost={lost} "
        f"duplicated={duplicates} ambiguous={ambiguous} in_flight_at_worker_kill={in_flight} "
        f"scheduler_takeover_s={takeover:.2f} statuses={dict(statuses)}"
    )
    assert notified == total
    assert dict(statuses) == {"sent": total}
    assert lost == 0
    assert duplicates <= in_flight
