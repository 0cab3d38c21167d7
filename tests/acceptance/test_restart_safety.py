"""kill -9 `herald serve` mid-delivery, restart: nothing lost, duplicates bounded by in-flight sends."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from tests.support.process import HeraldProcess, accept_emails, db_query, herald_cli, write_config
from tests.support.smtp import SmtpTestServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stack")]

FINAL = ("sent", "delivered", "read", "failed", "dead", "skipped", "cancelled")


def _wait_all_final(db: Path, expected: int, timeout: float = 120) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    placeholders = ",".join("?" * len(FINAL))
    while time.monotonic() < deadline:
        (done,) = db_query(db, f"SELECT count(*) FROM deliveries WHERE status IN ({placeholders})", *FINAL)[0]
        if done >= expected:
            break
        time.sleep(0.2)
    return dict(db_query(db, "SELECT status, count(*) FROM deliveries GROUP BY status"))


def test_kill_9_mid_delivery_then_restart(tmp_path: Path, smtp_server: SmtpTestServer) -> None:
    total = 2000
    smtp_server.handler.delay = 0.004
    write_config(tmp_path, smtp_server.port)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    assert key.startswith("hk_")
    h = HeraldProcess(tmp_path, key).start()
    try:
        ids = accept_emails(h, total)
        assert len(ids) == total
        deadline = time.monotonic() + 60
        while len(smtp_server.handler.received) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        h.kill()
    finally:
        h.stop()
    received_at_kill = len(smtp_server.handler.received)
    db = tmp_path / "herald.db"
    in_flight = db_query(db, "SELECT count(*) FROM deliveries WHERE status = 'sending'")[0][0]
    (notified,) = db_query(db, "SELECT count(*) FROM notifications")[0]
    assert notified == total  # every 202 was committed

    h2 = HeraldProcess(tmp_path, key).start()
    try:
        by_status = _wait_all_final(db, total)
    finally:
        h2.stop()

    counts = collections.Counter(smtp_server.handler.delivery_ids())
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    unrouted = db_query(db, "SELECT count(*) FROM notifications WHERE status NOT IN ('routed')")[0][0]
    lost = total - len(counts)
    print(
        f"\nrestart safety: accepted={total} received_at_kill={received_at_kill} "
        f"in_flight_at_kill={in_flight} "
        f"received_unique={len(counts)} duplicates={duplicates} lost={lost} statuses={by_status}"
    )
    assert unrouted == 0
    assert by_status.get("sent") == total, by_status
    assert lost == 0
    assert duplicates <= in_flight
    ambiguous = db_query(db, "SELECT count(*) FROM attempts WHERE ambiguous = TRUE")[0][0]
    assert ambiguous == in_flight  # each reclaimed in-flight send is recorded as ambiguous
