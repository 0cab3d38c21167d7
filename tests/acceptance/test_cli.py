"""The ``herald`` command as an operator uses it: send, status a page at a time, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.process import HeraldProcess, herald_cli, write_config
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
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path, args: list[str], message: str) -> None:
    write_config(tmp_path, 2525)
    done = herald_cli(tmp_path, *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
