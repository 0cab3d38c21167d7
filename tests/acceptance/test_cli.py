"""The ``herald`` command as an operator uses it: send, status a page at a time, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.process import HeraldProcess, db_query, herald_cli, write_config
from tests.support.smtp import SmtpTestServer

pytestmark = pytest.mark.slow


def test_send_then_status_pages_through_the_deliveries(tmp_path: Path, smtp_server: SmtpTestServer) -> None:
    write_config(tmp_path, smtp_server.port)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    h = HeraldProcess(tmp_path, key).start()
    try:
        with h.client() as c:
            for i in range(5):
                assert c.put(f"/v1/users/u{i}", json={"email": f"u{i}@example.com"}).status_code == 200
        to = [arg for i in range(5) for arg in ("--to", f"u{i}")]
        content = json.dumps({"subject": "hello", "text": "from the command line"})
        sent = herald_cli(tmp_path, "send", *to, "--content", content, "--channels", "email")
        assert sent.returncode == 0, sent.stderr
        notification_id = sent.stdout.strip()

        seen: list[str] = []
        after: list[str] = []
        for _ in range(5):
            shown = herald_cli(tmp_path, "status", notification_id, "--deliveries-limit", "2", *after)
            assert shown.returncode == 0, shown.stderr
            view = json.loads(shown.stdout)
            assert view["id"] == notification_id
            assert sum(view["summary"].values()) == 5  # counts for all, whatever the page
            seen += [d["id"] for d in view["deliveries"]]
            if view["deliveries_next"] is None:
                break
            assert len(view["deliveries"]) == 2
            after = ["--deliveries-after", view["deliveries_next"]]
        assert len(seen) == len(set(seen)) == 5
    finally:
        h.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "n_does_not_exist"], "does not exist"),
        (["status", "n_x", "--deliveries-limit", "0"], "deliveries-limit"),
        (["send", "--to", "u1", "--content", "{not json"], "--content"),
        (["worker", "--channels", "pigeon"], "unknown channels"),
        (["worker", "--wake-fd", "99"], "not an open socket"),
        (["worker", "--lanes", "urgent"], "--lanes"),
        (["worker", "--lanes", "critical,low"], "adjacent"),
        (["worker", "--lanes", "high,high"], "twice"),
        (["worker", "--nice", "40"], "--nice"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path, args: list[str], message: str) -> None:
    write_config(tmp_path, 2525)
    done = herald_cli(tmp_path, *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ('worker_lanes = ["critical", "low"]', "server.worker_lanes"),
        ("worker_lanes = []", "server.worker_lanes"),
        # the children take high and normal: critical and low left to serve are not adjacent
        ('worker_processes = 1\nworker_lanes = ["high", "normal"]', "server.worker_lanes"),
        ("worker_nice = 25", "server.worker_nice"),
        ('serve_lanes = ["critical", "low"]', "server.serve_lanes"),
        ('serve_lanes = ["urgent"]', "server.serve_lanes"),
        # the children take critical and high; normal, low and serve_lanes' critical are not adjacent
        ('worker_processes = 1\nworker_lanes = ["critical", "high"]', "server.serve_lanes"),
    ],
)
def test_bad_worker_lanes_fail_at_start_naming_the_key(tmp_path: Path, server: str, message: str) -> None:
    write_config(tmp_path, 2525, extra=f"\n[server]\n{server}\n")
    done = herald_cli(tmp_path, "serve", "--port", "0", timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert not (tmp_path / "herald.db").exists() or not db_query(
        tmp_path / "herald.db", "SELECT 1 FROM notifications"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HERALD_QUEUE__RELAY_LANES": "[]"}, "queue.relay_lanes"),
        ({"HERALD_QUEUE__RELAY_LANES": '["critical", "critical"]'}, "queue.relay_lanes"),
        ({"HERALD_QUEUE__RELAY_LANES": '["urgent"]'}, "queue.relay_lanes"),
        ({"HERALD_SCHEDULER__PROMOTE_RATE": "-1"}, "scheduler.promote_rate"),
        ({"HERALD_SCHEDULER__PROMOTE_RATE": "fast"}, "scheduler.promote_rate"),
    ],
)
def test_bad_relay_lanes_or_promote_rate_fail_at_start_naming_the_key(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    write_config(tmp_path, 2525)
    done = herald_cli(tmp_path, "serve", "--port", "0", env=env, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert not (tmp_path / "herald.db").exists()  # failed before touching the database


def test_a_worker_for_some_channels_still_routes_every_channel(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    """``herald worker --channels email`` sends email only; the notifications its router takes
    still get their sms deliveries queued for the workers that send sms (not skipped as
    ``channel_disabled``)."""
    write_config(tmp_path, smtp_server.port)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    api = HeraldProcess(tmp_path, key, role="api").start()
    worker = None
    try:
        with api.client() as c:
            user = {"email": "u1@example.com", "phone": "+14155550100"}
            assert c.put("/v1/users/u1", json=user).status_code == 200
            body = {"to": "u1", "content": {"subject": "s", "text": "t"}, "channels": ["email", "sms"]}
            r = c.post("/v1/notifications", json=body)
            assert r.status_code == 202, r.text
        with (tmp_path / "worker.log").open("ab") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "herald", "worker", "--channels", "email"],
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        rows: dict[str, tuple[str, str | None]] = {}
        while time.monotonic() < deadline:
            rows = {
                ch: (st, rs)
                for ch, st, rs in db_query(
                    tmp_path / "herald.db", "SELECT channel, status, reason FROM deliveries"
                )
            }
            if rows.get("email", ("",))[0] == "sent" and "sms" in rows:
                break
            time.sleep(0.05)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(15)
        api.stop()
    assert rows["email"] == ("sent", None)
    assert rows["sms"][0] == "queued", rows  # waiting for an sms sender, not skipped
