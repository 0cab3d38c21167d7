"""The commands operators reach for, run as they run them: keys, --version, dead-letter replay,
db upgrade, config check, bench."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from herald import __version__
from tests.support.net import free_port
from tests.support.process import HeraldProcess, herald_cli, write_config

pytestmark = pytest.mark.slow


def test_version(tmp_path: Path) -> None:
    done = herald_cli(tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"herald {__version__}"


def test_keys_list_shows_name_scope_created_and_last_use_never_the_secret(tmp_path: Path) -> None:
    write_config(tmp_path, free_port())
    admin = herald_cli(tmp_path, "keys", "create", "--scope", "admin", "--name", "ops").stdout.strip()
    reader = herald_cli(tmp_path, "keys", "create", "--scope", "read", "--name", "dashboard").stdout.strip()
    assert admin.startswith("hk_") and reader.startswith("hk_")

    listed = herald_cli(tmp_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "SCOPES", "CREATED", "LAST", "USED"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["ops"][2] == "admin" and rows["dashboard"][2] == "read"
    assert rows["ops"][4] == "never"
    assert admin not in listed.stdout and reader not in listed.stdout
    assert admin[3:12] not in listed.stdout  # not even part of it

    h = HeraldProcess(tmp_path, admin).start()
    try:
        with h.client() as c:
            assert c.get("/v1/stats").status_code == 200
        deadline = time.monotonic() + 30  # the use is recorded in the background
        used = None
        while time.monotonic() < deadline:
            keys = [json.loads(x) for x in herald_cli(tmp_path, "keys", "list", "--json").stdout.splitlines()]
            used = next(k for k in keys if k["name"] == "ops")["last_used_at"]
            if used is not None:
                break
            time.sleep(0.5)
        assert used is not None and used.endswith("Z")
        dashboard = next(k for k in keys if k["name"] == "dashboard")
        assert dashboard["last_used_at"] is None and dashboard["scopes"] == ["read"]
        assert set(dashboard) == {"id", "name", "scopes", "created_at", "last_used_at", "revoked_at"}

        # Revoked before any use in the running server (nothing cached): refused at once.
        revoked = herald_cli(tmp_path, "keys", "revoke", "dashboard")
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.strip() == f"revoked {dashboard['id']} (dashboard)"
        r = httpx.get(f"{h.url}/v1/stats", headers={"Authorization": f"Bearer {reader}"})
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]
    finally:
        h.stop()
    assert "dashboard" not in herald_cli(tmp_path, "keys", "list").stdout
    assert "dashboard" in herald_cli(tmp_path, "keys", "list", "--revoked").stdout


def test_keys_revoke_refuses_unknown_and_ambiguous_keys(tmp_path: Path) -> None:
    write_config(tmp_path, free_port())
    for _ in range(2):
        herald_cli(tmp_path, "keys", "create", "--scope", "send", "--name", "ci")
    unknown = herald_cli(tmp_path, "keys", "revoke", "key_nope")
    assert unknown.returncode == 1
    assert "no live API key" in unknown.stderr and "Traceback" not in unknown.stderr
    ambiguous = herald_cli(tmp_path, "keys", "revoke", "ci")
    assert ambiguous.returncode == 1
    assert "2 live keys are named 'ci'" in ambiguous.stderr
    assert len(herald_cli(tmp_path, "keys", "list").stdout.splitlines()) == 3  # nothing revoked


def test_db_upgrade_says_what_it_did(tmp_path: Path) -> None:
    write_config(tmp_path, free_port())
    first = herald_cli(tmp_path, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "created the schema (revision " in first.stdout
    again = herald_cli(tmp_path, "db", "upgrade")
    assert again.returncode == 0
    assert "already at the newest revision" in again.stdout and "nothing to do" in again.stdout


def _one_dead_delivery(tmp_path: Path, h: HeraldProcess) -> str:
    with h.client() as c:
        assert c.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
        r = c.post(
            "/v1/notifications",
            json={"to": "u1", "content": {"subject": "s", "text": "t"}, "channels": ["email"]},
        )
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            dead = c.get("/v1/dead-letters").json()["items"]
            if dead:
                return str(dead[0]["id"])
            time.sleep(0.2)
    raise AssertionError("no dead delivery")


def test_dead_letters_replay_needs_ids_or_all_and_refuses_unknown_ids(tmp_path: Path) -> None:
    # SMTP on a port nobody listens on, one attempt: the delivery is dead at once.
    write_config(tmp_path, free_port(), extra="[retry]\nschedule = [0]\n")
    key = herald_cli(tmp_path, "keys", "create", "--scope", "admin").stdout.strip()
    h = HeraldProcess(tmp_path, key).start()
    try:
        delivery_id = _one_dead_delivery(tmp_path, h)
    finally:
        h.stop()

    bare = herald_cli(tmp_path, "dead-letters", "replay")
    assert bare.returncode == 2
    assert "1 dead deliveries" in bare.stderr and "--all" in bare.stderr
    filtered = herald_cli(tmp_path, "dead-letters", "replay", "--channel", "sms")
    assert filtered.returncode == 2 and "0 dead deliveries matching the filters" in filtered.stderr

    unknown = herald_cli(tmp_path, "dead-letters", "replay", delivery_id, "dlv_does_not_exist")
    assert unknown.returncode == 1
    assert "dlv_does_not_exist" in unknown.stderr and "nothing was replayed" in unknown.stderr
    listed = herald_cli(tmp_path, "dead-letters", "list")
    assert delivery_id in listed.stdout  # still dead: the known id was not replayed either

    both = herald_cli(tmp_path, "dead-letters", "replay", delivery_id, "--all")
    assert both.returncode != 0

    replayed = herald_cli(tmp_path, "dead-letters", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "replayed 1"
    assert delivery_id not in herald_cli(tmp_path, "dead-letters", "list").stdout


def test_config_check_validates_without_starting(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[server]\nport = 8099\n[channels.email]\nproviders = ["smtp"]\n')
    done = herald_cli(tmp_path, "config", "check", str(good))
    assert done.returncode == 0, done.stderr
    assert "good.toml: ok" in done.stdout and "email → smtp" in done.stdout
    assert not (tmp_path / "herald.db").exists()  # nothing was started or created

    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[server]\nport = 99999\n",
    )
    done = herald_cli(tmp_path, "config", "check", str(bad))
    assert done.returncode == 1
    assert "server.port" in done.stderr and "Traceback" not in done.stderr

    providers = tmp_path / "providers.toml"
    providers.write_text(
        '[channels.email]\nproviders = ["sendgrid"]\n'
        '[channels.sms]\nproviders = ["twilio"]\n'
        '[providers.sendgrid]\napi_key = "SG.x"\nfrom_email = "not an address"\n'
        "[providers.pigeon]\nspeed = 3\n"
    )
    done = herald_cli(tmp_path, "config", "check", str(providers))
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert any("providers.sendgrid.from_email" in e for e in errors)
    assert any(
        "providers.twilio: a channel uses it but there is no [providers.twilio] table" in e for e in errors
    )
    assert any("providers.pigeon: unknown provider" in e for e in errors)

    missing = herald_cli(tmp_path, "config", "check", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_bench_runs_the_harness_of_the_checkout(tmp_path: Path) -> None:
    done = herald_cli(tmp_path, "bench", "--help")
    assert done.returncode == 0, done.stderr
    assert "python -m bench" in done.stdout and "drain" in done.stdout
