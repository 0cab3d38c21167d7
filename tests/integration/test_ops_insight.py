"""Issue 22 for the on-call engineer: dead letters say why, the request counter counts, the
metrics endpoint and the alert rules pass promtool."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import promtool
from tests.support.herald import Running, make_settings, running_herald
from tests.support.process import herald_cli, write_config
from tests.support.smtp import SmtpTestServer
from tests.support.waits import add_user, send, wait_status


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def metrics_text(h: Running) -> str:
    r = await h.client.get("/metrics")
    assert r.status_code == 200
    return r.text


async def test_dead_letters_carry_attempts_and_last_error_in_api_and_cli(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    # Two attempts, both refused with 451, then the retry schedule is spent: dead.
    smtp_server.handler.data_replies.extend(["451 4.3.0 Mailbox busy", "451 4.3.0 Mailbox busy"])
    settings = make_settings(
        tmp_path, smtp_port=smtp_server.port, retry={"schedule": [0.0, 0.0], "jitter": 0}
    )
    async with running_herald(settings) as h:
        await add_user(h)
        nid = await send(h)
        d = await wait_status(h, nid, "dead", attempts=2)

        r = await h.client.get("/v1/dead-letters")
        assert r.status_code == 200
        (item,) = r.json()["items"]
        assert item["id"] == d["id"] and item["attempt_count"] == 2
        assert [(a["n"], a["outcome"], a["code"], a["provider"]) for a in item["attempts"]] == [
            (1, "transient", "451 4.3.0", "smtp"),
            (2, "transient", "451 4.3.0", "smtp"),
        ]
        last = item["last_error"]
        assert (last["provider"], last["code"], last["outcome"], last["n"]) == (
            "smtp",
            "451 4.3.0",
            "transient",
            2,
        )
        assert "Mailbox busy" in last["detail"]

        for params, expected in (
            ({"code": "451 4.3.0"}, [d["id"]]),
            ({"code": "550"}, []),
            ({"provider": "smtp", "reason": "retries_exhausted"}, [d["id"]]),
            ({"provider": "sendgrid"}, []),
            ({"reason": "permanent_error"}, []),
        ):
            got = (await h.client.get("/v1/dead-letters", params=params)).json()["items"]
            assert [x["id"] for x in got] == expected, params
        bad = await h.client.get("/v1/dead-letters", params={"code": "x" * 65})
        assert bad.status_code == 422 and "code" in bad.text

        dead = samples(await metrics_text(h), "herald_dead_letters")
        assert ({"channel": "email", "provider": "smtp"}, 1.0) in dead

    # The command line reads the same database.
    write_config(tmp_path, smtp_server.port)
    listed = await asyncio.to_thread(herald_cli, tmp_path, "dead-letters", "list", "--code", "451 4.3.0")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.strip().splitlines()
    shown = json.loads(line)
    assert shown["id"] == d["id"] and len(shown["attempts"]) == 2
    assert shown["last_error"]["code"] == "451 4.3.0" and shown["last_error"]["provider"] == "smtp"
    none = await asyncio.to_thread(herald_cli, tmp_path, "dead-letters", "list", "--provider", "ses")
    assert none.returncode == 0 and none.stdout.strip() == ""


async def test_request_counter_counts_by_method_route_template_and_status_class(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        await add_user(h)
        body = {"to": "u1", "content": {"subject": "Hi", "text": "hello"}, "channels": ["email"]}
        for _ in range(3):  # the fast path of POST /v1/notifications
            assert (await h.client.post("/v1/notifications", json=body)).status_code == 202
        assert (await h.client.post("/v1/notifications", json={"to": "u1"})).status_code == 422
        for missing in ("ntf_a", "ntf_b"):
            assert (await h.client.get(f"/v1/notifications/{missing}")).status_code == 404
        assert (await h.client.get("/healthz")).status_code == 200
        assert (await h.client.get("/no/such/path/123")).status_code == 404
        unauth = await h.client.get("/v1/stats", headers={"Authorization": "Bearer nope"})
        assert unauth.status_code == 401

        got = {
            (lab["method"], lab["route"], lab["status"]): v
            for lab, v in samples(await metrics_text(h), "herald_http_requests_total")
        }
        assert got[("POST", "/v1/notifications", "2xx")] == 3
        assert got[("POST", "/v1/notifications", "4xx")] == 1
        assert got[("PUT", "/v1/users/{user_id}", "2xx")] == 1
        # Route templates, never raw paths: two ids, one series.
        assert got[("GET", "/v1/notifications/{notification_id}", "4xx")] == 2
        assert got[("GET", "/healthz", "2xx")] == 1
        assert got[("GET", "<unmatched>", "4xx")] == 1
        assert got[("GET", "/v1/stats", "4xx")] == 1
        assert not any("ntf_a" in route or "/no/such" in route for _, route, _ in got)


async def test_metrics_endpoint_passes_promtool_check_metrics(tmp_path: Path) -> None:
    promtool.promtool()
    async with running_herald(make_settings(tmp_path)) as h:
        await add_user(h)
        nid = await send(h)
        await h.wait_final(nid)
        text = await metrics_text(h)
    for name in (
        "herald_http_requests_total",
        "herald_queue_depth",
        "herald_event_ingestion_lag_seconds",
        "herald_attempt_latency_seconds_bucket",
    ):
        assert name in text, name
    checked = promtool.run("check", "metrics", stdin=text.encode())
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool.run("check", "rules", str(promtool.RULES))
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    assert b"SUCCESS" in checked.stdout
    tested = promtool.run("test", "rules", str(promtool.RULE_TESTS))
    assert tested.returncode == 0, (tested.stdout + tested.stderr).decode()
    names = promtool.RULES.read_text()
    for alert in (
        "HeraldDeadLettersGrowing",
        "HeraldCircuitOpen",
        "HeraldAmbiguousSends",
        "HeraldCriticalQueueAge",
    ):
        assert f"alert: {alert}" in names
