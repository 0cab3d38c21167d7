"""``herald serve`` with ``server.worker_processes``: sends in supervised children.

The real CLI in subprocesses on SQLite: the children send every email exactly once, are
woken by the parent, come back after a crash, stop with the parent (gracefully on SIGTERM,
by themselves when the parent is killed), and in-app stays in the parent.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import free_port
from tests.support.process import HeraldProcess, accept_emails, db_query, herald_cli, write_config
from tests.support.smtp import SmtpTestServer

pytestmark = pytest.mark.slow

CHILDREN = "\n[server]\nworker_processes = 1\n"
REPO = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, smtp_port: int, *, lease: float = 2.0, idle_wait: float = 0.2) -> HeraldProcess:
    write_config(tmp_path, smtp_port, lease=lease, idle_wait=idle_wait, extra=CHILDREN)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    assert key.startswith("hk_")
    return HeraldProcess(tmp_path, key).start()


def _workers(h: HeraldProcess, timeout: float = 30) -> list[dict[str, Any]]:
    """/readyz's worker_processes once every child is up."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{h.url}/readyz", timeout=5).json()
        workers = body.get("worker_processes") or []
        if workers and all(w["alive"] for w in workers):
            return list(workers)
        time.sleep(0.05)
    raise AssertionError(f"worker children not up: {body}")


def _wait_sent(db: Path, expected: int, timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    by_status: dict[str, int] = {}
    while time.monotonic() < deadline:
        by_status = dict(db_query(db, "SELECT status, count(*) FROM deliveries GROUP BY status"))
        if by_status.get("sent", 0) >= expected:
            break
        time.sleep(0.1)
    return by_status


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent's wait() is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "zombie" not in status


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_children_send_every_email_once_and_in_app_stays_in_the_parent(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    h = _start(tmp_path, smtp_server.port)
    db = tmp_path / "herald.db"
    try:
        (child,) = _workers(h)
        assert h.proc is not None and child["pid"] != h.proc.pid
        smtp_server.handler.delay = 0.02  # 16 slots: ~1.3 s of sending to watch
        ids = accept_emails(h, 1000, batch=500)
        owners: set[str] = set()  # who holds the leases while the emails go out
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = db_query(db, "SELECT status, lease_owner FROM deliveries")
            owners |= {owner.split("-")[1] for status, owner in rows if status == "sending"}
            if len(rows) == 1000 and all(status == "sent" for status, _ in rows):
                break
            time.sleep(0.005)
        by_status = _wait_sent(db, 1000)
        assert by_status == {"sent": 1000}
        # in_app is sent by the parent: its live inbox stream (in the parent) gets the item.
        with h.client() as c, c.stream("GET", "/v1/users/u1/inbox/stream", timeout=10) as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: unread"
            r = c.post(
                "/v1/notifications",
                json={"to": "u1", "content": {"title": "hi", "body": "live"}, "channels": ["in_app"]},
            )
            assert r.status_code == 202, r.text
            events = []
            for line in lines:
                events.append(line)
                if line.startswith("data:") and "live" in line:
                    break
            assert "event: item" in events
    finally:
        h.stop()
    counts = collections.Counter(smtp_server.handler.delivery_ids())
    assert len(ids) == 1000
    assert len(counts) == 1000 and max(counts.values()) == 1  # lost 0, dup 0
    assert owners == {str(child["pid"])}  # every email was claimed by the child


def test_a_crashed_child_is_restarted_and_nothing_is_lost(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    smtp_server.handler.delay = 0.004
    h = _start(tmp_path, smtp_server.port)
    db = tmp_path / "herald.db"
    try:
        (child,) = _workers(h)
        accept_emails(h, 1500, batch=500)
        deadline = time.monotonic() + 60
        while len(smtp_server.handler.received) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(child["pid"], signal.SIGKILL)
        assert _wait_gone(child["pid"], 10)
        in_flight = db_query(db, "SELECT count(*) FROM deliveries WHERE status = 'sending'")[0][0]
        (again,) = _workers(h)
        assert again["pid"] != child["pid"] and again["restarts"] == 1
        by_status = _wait_sent(db, 1500)
        ambiguous = db_query(db, "SELECT count(*) FROM attempts WHERE ambiguous = TRUE")[0][0]
    finally:
        h.stop()
    counts = collections.Counter(smtp_server.handler.delivery_ids())
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    assert by_status == {"sent": 1500}
    assert len(counts) == 1500  # lost 0
    assert duplicates <= in_flight  # only sends the crash left ambiguous can repeat
    assert ambiguous == in_flight  # each reclaimed from the dead child's leases


def test_sigterm_stops_the_children_gracefully(tmp_path: Path, smtp_server: SmtpTestServer) -> None:
    smtp_server.handler.delay = 0.004
    h = _start(tmp_path, smtp_server.port, lease=30.0)
    (child,) = _workers(h)
    accept_emails(h, 1500, batch=500)
    deadline = time.monotonic() + 60
    while len(smtp_server.handler.received) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    rc = h.kill(signal.SIGTERM)
    assert rc in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    assert not _alive(child["pid"])  # the parent waited for its child
    db = tmp_path / "herald.db"
    # Sends in flight finished and were recorded: nothing left under a lease for 30 s.
    assert db_query(db, "SELECT count(*) FROM deliveries WHERE status = 'sending'")[0][0] == 0
    counts = collections.Counter(smtp_server.handler.delivery_ids())
    assert max(counts.values()) == 1
    sent = db_query(db, "SELECT count(*) FROM deliveries WHERE status = 'sent'")[0][0]
    assert sent == len(counts)  # every send the provider took is recorded, none twice


def test_a_child_stops_by_itself_when_the_parent_is_killed(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    smtp_server.handler.delay = 0.004
    h = _start(tmp_path, smtp_server.port, lease=30.0)
    try:
        (child,) = _workers(h)
        accept_emails(h, 1000, batch=500)
        deadline = time.monotonic() + 60
        while len(smtp_server.handler.received) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        h.kill(signal.SIGKILL)
        assert _wait_gone(child["pid"], 20)  # no orphan keeps sending
    finally:
        h.stop()
        if _alive(child["pid"]):
            os.kill(child["pid"], signal.SIGKILL)
    db = tmp_path / "herald.db"
    # The child stopped gracefully: its sends in flight were recorded, not left to a 30 s lease.
    assert db_query(db, "SELECT count(*) FROM deliveries WHERE status = 'sending'")[0][0] == 0
    h2 = HeraldProcess(tmp_path, h.key).start()
    try:
        by_status = _wait_sent(db, 1000)
    finally:
        h2.stop()
    counts = collections.Counter(smtp_server.handler.delivery_ids())
    assert by_status == {"sent": 1000}
    assert len(counts) == 1000 and max(counts.values()) == 1


def test_the_parent_wakes_its_child_at_once(tmp_path: Path, smtp_server: SmtpTestServer) -> None:
    """A child polls only every idle_wait (here 30 s): a send within a second means it was woken."""
    h = _start(tmp_path, smtp_server.port, idle_wait=30.0)
    try:
        _workers(h)
        with h.client() as c:
            assert c.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
            time.sleep(1.0)  # the child's first claims are over: it is waiting now
            latencies = []
            for i in range(5):
                started = time.monotonic()
                r = c.post(
                    "/v1/notifications",
                    json={"to": "u1", "content": {"subject": f"w{i}", "text": "x"}, "channels": ["email"]},
                )
                assert r.status_code == 202, r.text
                while len(smtp_server.handler.received) < i + 1 and time.monotonic() - started < 30:
                    time.sleep(0.005)
                latencies.append(time.monotonic() - started)
    finally:
        h.stop()
    assert len(smtp_server.handler.received) == 5
    assert max(latencies) < 5.0, latencies  # woken, not polled (a poll would take up to 30 s)


def test_a_childs_provider_config_error_shows_in_the_parents_readyz(tmp_path: Path) -> None:
    """The child sends; /readyz of serve must still say that its provider's key is refused."""
    emulator_port = free_port()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.emulator",
            "--port",
            str(emulator_port),
            "--api-key",
            "SG.the-real-one",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (tmp_path / "herald.toml").write_text(
        f"""
[server]
worker_processes = 1

[database]
url = "sqlite:///{tmp_path / "herald.db"}"

[queue]
idle_wait_seconds = 0.2

[channels.email]
providers = ["sendgrid"]

[providers.sendgrid]
api_key = "SG.wrong"
from_email = "noreply@herald.example.com"
base_url = "http://127.0.0.1:{emulator_port}"
timeout = 5

[logging]
level = "warning"
"""
    )
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    h = HeraldProcess(tmp_path, key)
    try:
        h.start()
        _workers(h)
        assert httpx.get(f"{h.url}/readyz", timeout=5).json()["unhealthy_providers"] == {}
        accept_emails(h, 1)
        deadline = time.monotonic() + 20
        ready: dict[str, Any] = {}
        while time.monotonic() < deadline:
            ready = httpx.get(f"{h.url}/readyz", timeout=5).json()
            if ready["unhealthy_providers"]:
                break
            time.sleep(0.1)
        assert ready["unhealthy_providers"]["sendgrid"]["reason"] == "config_error", ready
        # Held, not failed: the retry budget is not spent on a configuration error.
        statuses = dict(
            db_query(tmp_path / "herald.db", "SELECT status, count(*) FROM deliveries GROUP BY status")
        )
        assert statuses == {"retrying": 1}, statuses
    finally:
        h.stop()
        emulator.terminate()
        emulator.wait(10)


@pytest.mark.parametrize(
    "lanes",
    ['worker_lanes = ["normal", "low"]', ""],
    ids=["bulk-lanes-in-the-child", "every-lane-in-the-child"],
)
def test_worker_lanes_keep_critical_in_the_parent_and_the_bulk_in_a_nice_child(
    tmp_path: Path, smtp_server: SmtpTestServer, stack: Any, lanes: str
) -> None:
    """``worker_lanes = ["normal", "low"]``, or every lane (the default) with the parent sending
    ``serve_lanes`` (critical, by default) as well: the child (at ``worker_nice``) sends the
    bulk, the parent the critical lane of the same channel, which it routes written claimed by
    its own senders; each email once, embedded and scaled out."""
    smtp_server.handler.delay = 0.05  # 16 slots: ~3 s of bulk sending to watch
    extra = f"\n[server]\nworker_processes = 1\n{lanes}\nworker_nice = 5\n"
    write_config(tmp_path, smtp_server.port, lease=30.0, extra=extra)
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    h = HeraldProcess(tmp_path, key).start()
    db = tmp_path / "herald.db"
    owners: dict[int, set[str]] = collections.defaultdict(set)  # priority rank -> lease holders' pids
    try:
        (child,) = _workers(h)
        assert h.proc is not None
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        deadline = time.monotonic() + 30  # the child lowers its priority as it starts
        while os.getpriority(os.PRIO_PROCESS, child["pid"]) == ours and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.getpriority(os.PRIO_PROCESS, child["pid"]) == min(19, ours + 5)
        assert os.getpriority(os.PRIO_PROCESS, h.proc.pid) == ours
        ids: list[str] = []
        with h.client() as c:
            assert c.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
            items = [
                {
                    "to": "u1",
                    "content": {"subject": f"b{i}", "text": "x"},
                    "channels": ["email"],
                    "priority": "low",
                }
                for i in range(1000)
            ]
            r = c.post("/v1/notifications/batch", json={"notifications": items})
            assert r.status_code == 202, r.text
            ids += [x["id"] for x in r.json()["results"]]
            for i in range(20):
                body = {"to": "u1", "content": {"subject": f"c{i}", "text": "x"}, "channels": ["email"]}
                r = c.post("/v1/notifications", json=body | {"priority": "critical"})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
                rows = db_query(db, "SELECT priority, lease_owner FROM deliveries WHERE status = 'sending'")
                for rank, owner in rows:
                    owners[rank].add(owner.split("-")[1])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = db_query(db, "SELECT priority, status, lease_owner FROM deliveries")
            for rank, status, owner in rows:
                if status == "sending":
                    owners[rank].add(owner.split("-")[1])
            if len(rows) == 1020 and all(status == "sent" for _, status, _ in rows):
                break
            time.sleep(0.005)
        by_status = _wait_sent(db, 1020)
        # Scale-out: herald serve relays the critical lane's outbox rows and the child the low
        # lane's (queue.relay_lanes); a lane nobody relays would stay in the outbox for good.
        deadline = time.monotonic() + 30
        while db_query(db, "SELECT count(*) FROM outbox")[0][0] and time.monotonic() < deadline:
            time.sleep(0.1)
        left = db_query(db, "SELECT priority, count(*) FROM outbox GROUP BY priority")
    finally:
        h.stop()
    assert by_status == {"sent": 1020}
    assert left == []
    counts = collections.Counter(smtp_server.handler.delivery_ids())
    assert len(counts) == 1020 and max(counts.values()) == 1  # lost 0, dup 0
    assert owners[3] == {str(child["pid"])}  # low: the child only
    assert owners[0] == {str(h.proc.pid)}  # critical: the parent only
