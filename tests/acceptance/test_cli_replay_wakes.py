"""``herald dead-letters replay`` run from a shell wakes the senders of a running herald (issue
18): the command's replay goes through the dead-letter service the API calls, whose wake-up
reaches other processes through PostgreSQL ``NOTIFY``.

The running herald's senders and router poll every 10 minutes, so a resend within the test's
deadline (2 minutes, generous for a busy machine) can only come from the wake-up. (On SQLite no
wake-up crosses processes: a replay from the CLI is sent at the next idle poll,
``queue.idle_wait_seconds``; services/dead_letters.py says so.)
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import REDIS_URL, pg_execute, pg_url_for, require_postgres
from tests.support.net import free_port
from tests.support.process import HeraldProcess, herald_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

POLL = 600.0  # seconds: far beyond the deadline below
DEADLINE = 120.0


def _config(cwd: Path, schema: str, prefix: str) -> None:
    # SMTP on a port nobody listens on, one attempt: every send fails, the delivery is dead at once.
    (cwd / "herald.toml").write_text(
        f"""
[database]
url = "{pg_url_for(schema)}"
pool_size = 4

[cache]
url = "{REDIS_URL}"
prefix = "{prefix}:"

[queue]
url = "sql"
idle_wait_seconds = {POLL}

[worker]
router_idle_seconds = {POLL}

[retry]
schedule = [0]

[server]
worker_processes = 0

[providers.smtp]
host = "127.0.0.1"
port = {free_port()}
from_address = "noreply@herald.test"
timeout = 10

[channels.email]
providers = ["smtp"]

[logging]
level = "info"
"""
    )


def _dead_letter(h: HeraldProcess, delivery_id: str | None, attempts: int) -> dict[str, Any]:
    """The dead delivery (``delivery_id``, or the only one) once it has ``attempts`` attempts."""
    deadline = time.monotonic() + DEADLINE
    items: list[dict[str, Any]] = []
    with h.client() as c:
        while time.monotonic() < deadline:
            items = c.get("/v1/dead-letters").json()["items"]
            for d in items:
                if delivery_id in (None, d["id"]) and len(d["attempts"]) >= attempts:
                    return dict(d)
            time.sleep(0.2)
    raise AssertionError(f"no dead delivery with {attempts} attempts within {DEADLINE}s: {items}")


def test_a_replay_from_the_cli_is_sent_by_a_running_herald_at_once(tmp_path: Path) -> None:
    require_postgres()
    schema = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{schema}"')
    _config(tmp_path, schema, f"herald-test-{uuid.uuid4().hex[:12]}")
    herald = None
    try:
        key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
        assert key.startswith("hk_")
        herald = HeraldProcess(tmp_path, key).start()
        with herald.client() as c:
            assert c.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
            r = c.post(
                "/v1/notifications",
                json={
                    "to": "u1",
                    "content": {"subject": "s", "text": "t"},
                    "channels": ["email"],
                    "priority": "critical",  # routed and sent at once, without a poll
                },
            )
            assert r.status_code == 202, r.text
        dead = _dead_letter(herald, None, 1)
        assert len(dead["attempts"]) == 1

        replayed = herald_cli(tmp_path, "dead-letters", "replay", dead["id"])
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.strip() == "replayed 1"

        # Sent again (and dead again: nobody listens) by the running herald, woken by the CLI.
        again = _dead_letter(herald, dead["id"], 2)
        assert len(again["attempts"]) == 2
        assert herald.proc is not None and herald.proc.poll() is None
    finally:
        if herald is not None:
            herald.stop()
        pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
