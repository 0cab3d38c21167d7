"""Issue 4: events and routing rules — conditions, all-at-once and fallback chains, 422s."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from herald.config import load_settings
from herald.domain.errors import ConfigurationError, PermanentDeliveryError
from herald.domain.models import DeliveryStatus
from herald.testing import RecordingProvider
from tests.support.herald import Running, make_settings, running_herald
from tests.support.waits import eventually

CHANNELS = {
    "push": {"providers": ["console"]},
    "sms": {"providers": ["console"]},
    "email": {"providers": ["console"]},
}
SHIPPED = {
    "category": "transactional",
    "channels": {
        "push": {"title": "Shipped", "body": "Order {{ data.order }} is on its way"},
        "sms": {"text": "Order {{ data.order }} shipped"},
        "email": {"subject": "Order {{ data.order }}", "text": "Shipped."},
    },
}
FALLBACK_RULE = {"template": "order_shipped", "fallback": ["push", "sms"], "priority": "high"}


def console_lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "console.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def setup(h: Running) -> None:
    assert (await h.client.put("/v1/templates/order_shipped", json=SHIPPED)).status_code == 200
    r = await h.client.put("/v1/users/with-device", json={"phone": "+33612345678", "email": "a@example.com"})
    assert r.status_code == 200, r.text
    r = await h.client.post(
        "/v1/users/with-device/devices", json={"kind": "fcm", "token": "fcm-token-with-device-1"}
    )
    assert r.status_code in (200, 201), r.text
    r = await h.client.put("/v1/users/no-device", json={"phone": "+33698765432", "email": "b@example.com"})
    assert r.status_code == 200, r.text


async def settled(h: Running, nid: str, expect: int) -> list[dict[str, Any]]:
    """The notification's deliveries once ``expect`` of them are final."""

    async def check() -> list[dict[str, Any]] | None:
        body = (await h.client.get(f"/v1/notifications/{nid}")).json()
        final = {"sent", "delivered", "failed", "dead", "skipped", "cancelled"}
        ds = body.get("deliveries", [])
        done = [d for d in ds if d["status"] in final]
        return ds if len(done) >= expect and len(done) == len(ds) else None

    result: list[dict[str, Any]] = await eventually(check)
    return result


async def test_rule_push_then_sms_fallback_by_device(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, channels=CHANNELS)
    async with running_herald(settings) as h:
        await setup(h)
        r = await h.client.put("/v1/rules/order_shipped", json=FALLBACK_RULE)
        assert r.status_code == 200, r.text
        assert r.json()["fallback"] == ["push", "sms"]
        got = await h.client.get("/v1/rules/order_shipped")
        assert got.json()["template"] == "order_shipped" and got.json()["source"] == "api"

        ids = {}
        for user in ("with-device", "no-device"):
            r = await h.client.post(
                "/v1/events", json={"type": "order_shipped", "to": user, "data": {"order": "A-1"}}
            )
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "accepted"
            ids[user] = r.json()["notification"]["id"]

        with_device = await settled(h, ids["with-device"], 1)
        assert [(d["channel"], d["status"]) for d in with_device] == [("push", "sent")]
        no_device = {d["channel"]: d for d in await settled(h, ids["no-device"], 2)}
        assert no_device["push"]["status"] == "skipped" and no_device["push"]["reason"] == "no_address"
        assert no_device["sms"]["status"] == "sent"

        lines = console_lines(tmp_path)
        seen = sorted((line["channel"], line["address"]) for line in lines)
        assert seen == [("push", "fcm-token-with-device-1"), ("sms", "+33698765432")]
        assert any("A-1" in str(line["content"]) for line in lines)


async def test_condition_false_sends_nothing_and_says_why(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, channels=CHANNELS)
    async with running_herald(settings) as h:
        await setup(h)
        rule = {**FALLBACK_RULE, "conditions": [{"field": "data.amount", "op": "gt", "value": 100}]}
        assert (await h.client.put("/v1/rules/order_shipped", json=rule)).status_code == 200
        r = await h.client.post(
            "/v1/events", json={"type": "order_shipped", "to": "with-device", "data": {"amount": 50}}
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "skipped" and body["reason"] == "condition_false"
        assert "data.amount gt 100" in body["detail"] and "50" in body["detail"]
        assert body["notification_id"] is None
        stored = (await h.client.get(f"/v1/events/{body['id']}")).json()
        assert stored["status"] == "skipped" and stored["body"]["data"] == {"amount": 50}

        r = await h.client.post(
            "/v1/events", json={"type": "order_shipped", "to": "with-device", "data": {"amount": 150}}
        )
        assert r.json()["status"] == "accepted"
        await settled(h, r.json()["notification"]["id"], 1)
        await asyncio.sleep(0.2)
        assert len(console_lines(tmp_path)) == 1  # only the event whose condition held


async def test_all_at_once_rule_and_permanent_failure_falls_back(tmp_path: Path) -> None:
    push = RecordingProvider("pushrec")
    channels = {**CHANNELS, "push": {"providers": ["pushrec"]}}
    settings = make_settings(tmp_path, channels=channels)
    async with running_herald(settings, providers={"pushrec": push}) as h:
        await setup(h)
        rule = {"template": "order_shipped", "channels": ["push", "sms", "email"]}
        assert (await h.client.put("/v1/rules/parallel", json=rule)).status_code == 200
        r = await h.client.post("/v1/events", json={"type": "parallel", "to": "with-device", "data": {}})
        ds = await settled(h, r.json()["notification"]["id"], 3)
        assert sorted(d["channel"] for d in ds if d["status"] == "sent") == ["email", "push", "sms"]

        # push answers a permanent error: the chain hands over to sms, then stops there.
        push.script([PermanentDeliveryError("unregistered sender", code="403")])
        chain = {"template": "order_shipped", "fallback": ["push", "sms", "email"]}
        assert (await h.client.put("/v1/rules/chain", json=chain)).status_code == 200
        r = await h.client.post(
            "/v1/events", json={"type": "chain", "to": "with-device", "data": {}, "idempotency_key": "c-1"}
        )
        nid = r.json()["notification"]["id"]
        ds = {d["channel"]: d for d in await settled(h, nid, 2)}
        assert ds["push"]["status"] == "failed" and ds["push"]["reason"] == "permanent_error"
        assert ds["sms"]["status"] == "sent"
        assert "email" not in ds
        # The same idempotency key answers the same response and makes nothing new.
        again = await h.client.post(
            "/v1/events", json={"type": "chain", "to": "with-device", "data": {}, "idempotency_key": "c-1"}
        )
        assert again.status_code == 202 and again.json()["notification"]["id"] == nid


async def test_unknown_event_type_is_422_or_stored_unrouted(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path, channels=CHANNELS)) as h:
        await setup(h)
        r = await h.client.post("/v1/events", json={"type": "nobody_knows", "to": "with-device"})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == "type" and "no routing rule" in r.json()["detail"]
    stored_settings = make_settings(tmp_path / "b", channels=CHANNELS, events={"unrouted": "store"})
    (tmp_path / "b").mkdir()
    async with running_herald(stored_settings) as h:
        await setup(h)
        r = await h.client.post("/v1/events", json={"type": "nobody_knows", "to": "with-device"})
        assert r.status_code == 202 and r.json()["status"] == "unrouted"
        stored = (await h.client.get(f"/v1/events/{r.json()['id']}")).json()
        assert stored["reason"] == "no_rule"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"template": "order_shipped"}, "channels"),
        ({"template": "order_shipped", "channels": ["push"], "fallback": ["sms"]}, "channels"),
        ({"template": "order_shipped", "channels": ["pigeon"]}, "channels[0]"),
        ({"template": "order_shipped", "channels": []}, "channels"),
        ({"channels": ["sms"]}, "template"),
        ({"template": "missing", "channels": ["sms"]}, "template"),
        ({"template": "order_shipped", "channels": ["sms"], "category": "nope"}, "category"),
        ({"template": "order_shipped", "channels": ["sms"], "priority": "urgent"}, "priority"),
        ({"template": "order_shipped", "channels": ["sms"], "colour": "red"}, "colour"),
        ({"template": "order_shipped", "channels": ["sms"], "conditions": {"a": 1}}, "conditions"),
        (
            {
                "template": "order_shipped",
                "channels": ["sms"],
                "conditions": [{"field": "amount", "op": "gt", "value": 1}],
            },
            "conditions[0].field",
        ),
        (
            {
                "template": "order_shipped",
                "channels": ["sms"],
                "conditions": [{"field": "data.a", "op": "like", "value": 1}],
            },
            "conditions[0].op",
        ),
        (
            {
                "template": "order_shipped",
                "channels": ["sms"],
                "conditions": [{"field": "data.a", "op": "gt"}],
            },
            "conditions[0].value",
        ),
        (
            {
                "template": "order_shipped",
                "channels": ["sms"],
                "conditions": [{"field": "data.a", "op": "in", "value": 3}],
            },
            "conditions[0].value",
        ),
        ({"template": "order_shipped", "channels": ["webhook"]}, "channels"),
    ],
)
async def test_malformed_rules_are_422_naming_the_field_and_store_nothing(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    async with running_herald(make_settings(tmp_path, channels=CHANNELS)) as h:
        await setup(h)
        r = await h.client.put("/v1/rules/order_shipped", json=body)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == field, r.json()
        assert (await h.client.get("/v1/rules/order_shipped")).status_code == 404
        assert (await h.client.get("/v1/rules")).json()["items"] == []


async def test_rules_from_the_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "herald.toml"
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "herald.db"}"
[providers.console]
path = "{tmp_path / "console.jsonl"}"
[channels.push]
providers = ["console"]
[channels.sms]
providers = ["console"]
[rules.order_shipped]
template = "order_shipped"
fallback = ["push", "sms"]
conditions = [{{field = "data.order", op = "exists"}}]
"""
    )
    settings = load_settings(config)
    async with running_herald(settings) as h:
        await setup(h)
        got = (await h.client.get("/v1/rules/order_shipped")).json()
        assert got["source"] == "config" and got["fallback"] == ["push", "sms"]
        r = await h.client.post("/v1/events", json={"type": "order_shipped", "to": "no-device", "data": {}})
        assert r.json()["status"] == "skipped" and "data.order exists" in r.json()["detail"]
        r = await h.client.post(
            "/v1/events", json={"type": "order_shipped", "to": "no-device", "data": {"order": "B"}}
        )
        ds = {d["channel"]: d["status"] for d in await settled(h, r.json()["notification"]["id"], 2)}
        assert ds == {"push": "skipped", "sms": "sent"}

    bad = tmp_path / "bad.toml"
    bad.write_text('[rules.x]\ntemplate = "t"\nfallback = ["push", "fax"]\n')
    with pytest.raises(ConfigurationError, match=r"rules\.x\.fallback\[1\]"):
        load_settings(bad)


async def test_malformed_events_are_422(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path, channels=CHANNELS)) as h:
        await setup(h)
        assert (await h.client.put("/v1/rules/order_shipped", json=FALLBACK_RULE)).status_code == 200
        cases = [
            ({"to": "no-device"}, "type"),
            ({"type": "order_shipped"}, "to"),
            ({"type": "order_shipped", "to": "no-device", "data": [1]}, "data"),
            ({"type": "order_shipped", "to": "ghost"}, "to"),
            ({"type": "order_shipped", "to": "no-device", "extra": 1}, "extra"),
        ]
        for body, field in cases:
            r = await h.client.post("/v1/events", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["field"] == field, (body, r.json())
        r = await h.client.post(
            "/v1/events", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code in (400, 422)
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_a_bounce_after_sending_moves_the_chain_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, channels=CHANNELS)
    async with running_herald(settings) as h:
        await setup(h)
        chain = {"template": "order_shipped", "fallback": ["email", "sms"]}
        assert (await h.client.put("/v1/rules/mail_first", json=chain)).status_code == 200
        r = await h.client.post("/v1/events", json={"type": "mail_first", "to": "no-device", "data": {}})
        nid = r.json()["notification"]["id"]
        (email,) = await settled(h, nid, 1)
        assert email["channel"] == "email" and email["status"] == "sent"
        # The provider's bounce callback fails the delivery (as TrackService records it).
        await h.container.store.mark_delivery(email["id"], DeliveryStatus.FAILED, now=h.container.clock.now())
        ds = {d["channel"]: d["status"] for d in await settled(h, nid, 2)}
        assert ds == {"email": "failed", "sms": "sent"}
