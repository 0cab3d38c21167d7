"""Issue 23: a critical notification accepted by a bare ``herald api`` (no router in it) is routed
and sent by a separate ``herald worker`` at once: the api wakes the workers' routers through
PostgreSQL ``NOTIFY``, with the sql queue and with RabbitMQ.

The routers' and the senders' polls are configured to 10 minutes, so a send within the test's
deadline (2 minutes, generous for a busy machine) can only come from the wake-up, never from a
poll. The worker has routed its start-up pass and gone idle before the notification comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import pytest

from tests.contract.conftest import REDIS_URL, pg_execute, pg_url_for, require_postgres
from tests.support.process import HeraldProcess, herald_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

POLL = 600.0  # seconds: far beyond the deadline below
DEADLINE = 120.0


def _config(cwd: Path, schema: str, queue: str, prefix: str) -> None:
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "{pg_url_for(schema)}"
pool_size = 4

[cache]
url = "{REDIS_URL}"
prefix = "{prefix}:"

[queue]
{queue}
idle_wait_seconds = {POLL}

[worker]
router_idle_seconds = {POLL}

[scheduler]
leader_ttl_seconds = 3

[channels.email]
providers = ["console"]

[providers.console]
path = "{cwd / "console.jsonl"}"

[logging]
level = "info"
"""
    )


def _wait_sent(api: HeraldProcess, nid: str) -> dict[str, object]:
    deadline = time.monotonic() + DEADLINE
    with api.client() as c:
        while time.monotonic() < deadline:
            body = c.get(f"/v1/notifications/{nid}").json()
            deliveries = body.get("deliveries") or []
            if deliveries and all(d["status"] == "sent" for d in deliveries):
                return dict(body)
            time.sleep(0.2)
    raise AssertionError(f"not sent within {DEADLINE}s (no wake-up?): {body}")


@pytest.mark.parametrize("broker", ["sql", "amqp"])
def test_a_critical_accepted_by_a_bare_api_is_sent_by_a_worker_at_once(
    tmp_path: Path, broker: str
) -> None:
    require_postgres()
    prefix = f"herald-test-{uuid.uuid4().hex[:12]}"
    queue = 'url = "sql"'
    if broker == "amqp":
        from tests.support.rabbitmq import RABBITMQ_URL, require_rabbitmq

        asyncio.run(require_rabbitmq())
        queue = f'url = "{RABBITMQ_URL}"\nprefix = "{prefix}"'
    schema = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{schema}"')
    _config(tmp_path, schema, queue, prefix)
    procs: list[HeraldProcess] = []
    try:
        created = herald_cli(tmp_path, "keys", "create", "--scope", "admin")
        key = created.stdout.strip()
        assert key.startswith("hk_"), created.stderr
        api = HeraldProcess(tmp_path, key, role="api").start()
        procs.append(api)
        worker = HeraldProcess(tmp_path, key, role="worker").start()
        procs.append(worker)
        with api.client() as c:
            assert c.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
        # The worker is up and idle once it sent a first notification; its router and senders
        # then sleep for POLL seconds unless woken.
        with api.client() as c:
            first = c.post(
                "/v1/notifications",
                json={
                    "to": "u1",
                    "content": {"subject": "warm", "text": "up"},
                    "priority": "critical",
                    "channels": ["email"],
                },
            )
            assert first.status_code == 202, first.text
        _wait_sent(api, first.json()["id"])
        time.sleep(1.0)  # the router's pass is over: it waits for a wake-up or POLL
        for i in range(3):
            with api.client() as c:
                r = c.post(
                    "/v1/notifications",
                    json={
                        "to": "u1",
                        "content": {"subject": f"alert {i}", "text": "now"},
                        "priority": "critical",
                        "channels": ["email"],
                    },
                )
            assert r.status_code == 202, r.text
            _wait_sent(api, r.json()["id"])
        assert worker.proc is not None and worker.proc.poll() is None, "the worker must still run"
    finally:
        for p in procs:
            p.stop()
        pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if broker == "amqp":
            from tests.support.rabbitmq import delete_everything

            with contextlib.suppress(Exception):
                asyncio.run(delete_everything(prefix))
