"""Issue 17 part 5: no input a client sends gets a 500 or a stall.

Each class of bad input is answered 4xx problem+json naming the field or the offence, quickly
(no stall: a generous bound, the stall this guards against was 20-100 s), nothing is stored,
and herald goes on serving. Every route that takes a body is tried, including the fast
``POST /v1/notifications`` path and the batch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.herald import Running, make_settings, running_herald

pytestmark = pytest.mark.usefixtures("stack")

NO_STALL_S = 10.0  # a guard against a stall, not a measurement
DEEP = '{"a":' * 300 + "1" + "}" * 300
DEEP_LIST = "[" * 300 + "]" * 300
HUGE_INT = "123456789012345678901234567890"


def _send(data: str, *, extra: str = "") -> str:
    return '{"to": "u1", "content": {"text": "hi"}, "channels": ["email"], "data": ' + data + extra + "}"


# (name, method, path, raw body, what the answer must name)
CASES: list[tuple[str, str, str, str | bytes, str]] = [
    ("tz folder, user", "PUT", "/v1/users/bad1", json.dumps({"timezone": "America"}), "timezone"),
    ("tz folder Etc, user", "PUT", "/v1/users/bad1", json.dumps({"timezone": "Etc"}), "timezone"),
    ("tz folder with slash", "PUT", "/v1/users/bad1", json.dumps({"timezone": "America/"}), "timezone"),
    ("tz over-long", "PUT", "/v1/users/bad1", json.dumps({"timezone": "A" * 64}), "timezone"),
    (
        "tz folder, inline recipient",
        "POST",
        "/v1/notifications",
        json.dumps(
            {
                "to": {"id": "x1", "email": "x@example.com", "timezone": "Etc"},
                "content": {"text": "hi"},
                "channels": ["email"],
            }
        ),
        "to.timezone",
    ),
    (
        "tz folder, inline recipient in a list",
        "POST",
        "/v1/notifications",
        json.dumps(
            {
                "to": [{"id": "x1", "email": "x@example.com", "timezone": "America"}],
                "content": {"text": "hi"},
                "channels": ["email"],
            }
        ),
        "to[0].timezone",
    ),
    ("lone surrogate, user data", "PUT", "/v1/users/bad1", '{"data": {"a": "\\ud800"}}', "surrogate"),
    ("lone surrogate, user email", "PUT", "/v1/users/bad1", '{"email": "\\udfff@example.com"}', "surrogate"),
    ("lone surrogate, send", "POST", "/v1/notifications", _send('{"a": "x\\ud800y"}'), "surrogate"),
    ("lone surrogate, key", "POST", "/v1/notifications", _send('{"\\ud800": 1}'), "surrogate"),
    (
        "lone surrogate, template",
        "PUT",
        "/v1/templates/t1",
        '{"channels": {"email": {"subject": "\\ud800", "text": "x"}}}',
        "surrogate",
    ),
    (
        "lone surrogate, event",
        "POST",
        "/v1/events",
        '{"type": "x", "to": "u1", "data": {"a": "\\udc00"}}',
        "surrogate",
    ),
    ("integer over 64 bits, user", "PUT", "/v1/users/bad1", '{"data": {"n": ' + HUGE_INT + "}}", "64 bits"),
    ("integer over 64 bits, send", "POST", "/v1/notifications", _send('{"n": -' + HUGE_INT + "}"), "64 bits"),
    (
        "integer over 64 bits, render",
        "POST",
        "/v1/templates/t1/render",
        '{"data": {"n": ' + HUGE_INT + "}}",
        "64 bits",
    ),
    ("float overflow", "PUT", "/v1/users/bad1", '{"data": {"x": 1e400}}', "64-bit float"),
    ("nested 300, user", "PUT", "/v1/users/bad1", '{"data": ' + DEEP + "}", "nests deeper"),
    ("nested 300 lists, user", "PUT", "/v1/users/bad1", '{"data": {"a": ' + DEEP_LIST + "}}", "nests deeper"),
    ("nested 300, send", "POST", "/v1/notifications", _send(DEEP), "nests deeper"),
    (
        "nested 300, event",
        "POST",
        "/v1/events",
        '{"type": "x", "to": "u1", "data": ' + DEEP + "}",
        "nests deeper",
    ),
    (
        "nested 300, batch",
        "POST",
        "/v1/notifications/batch",
        '{"notifications": [' + _send(DEEP) + "]}",
        "nests deeper",
    ),
    (
        "nested 100000",
        "PUT",
        "/v1/users/bad1",
        '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "nests deeper",
    ),
    ("NaN", "PUT", "/v1/users/bad1", '{"data": {"x": NaN}}', "NaN"),
    ("Infinity, send", "POST", "/v1/notifications", _send('{"x": Infinity}'), "Infinity"),
    (
        "-Infinity, preferences",
        "PUT",
        "/v1/users/u1/preferences",
        '{"channels": {"email": -Infinity}}',
        "Infinity",
    ),
    (
        "duplicate key, user",
        "PUT",
        "/v1/users/bad1",
        '{"email": "a@example.com", "email": "b@example.com"}',
        "'email' appears twice",
    ),
    ("duplicate key, send", "POST", "/v1/notifications", _send('{"k": 1, "k": 2}'), "'k' appears twice"),
    (
        "duplicate key, top of send",
        "POST",
        "/v1/notifications",
        '{"to": "u1", "to": "u2", "content": {"text": "x"}, "channels": ["email"]}',
        "'to' appears twice",
    ),
    ("not UTF-8", "PUT", "/v1/users/bad1", b'{"data": {"a": "\xff"}}', "UTF-8"),
]


async def _nothing_stored(h: Running) -> None:
    assert (await h.client.get("/v1/users/bad1")).status_code == 404
    assert (await h.client.get("/v1/users/x1")).status_code == 404
    assert (await h.client.get("/v1/templates/t1")).status_code == 404
    listed = (await h.client.get("/v1/notifications")).json()
    assert listed["items"] == [], listed
    prefs = (await h.client.get("/v1/users/u1/preferences")).json()
    assert prefs["channels"]["email"]["source"] == "default", prefs


async def test_each_bad_input_is_a_quick_4xx_problem_naming_it_and_stores_nothing(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        assert (await h.client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        for name, method, path, raw, named in CASES:
            started = time.monotonic()
            r = await h.client.request(
                method,
                path,
                content=raw if isinstance(raw, bytes) else raw.encode(),
                headers={"Content-Type": "application/json"},
            )
            took = time.monotonic() - started
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/problem+json", (name, r.headers)
            problem = r.json()
            assert named in problem["detail"] or named == problem.get("field"), (name, problem)
            assert took < NO_STALL_S, (name, took)
            health = await h.client.get("/healthz")
            assert health.status_code == 200, name
        await _nothing_stored(h)


async def test_a_batch_whose_items_all_fail_is_a_problem_with_every_item(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        assert (await h.client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        items = [
            {"to": "nobody", "content": {"text": "x"}, "channels": ["email"]},
            {
                "to": {"id": "x1", "email": "x@example.com", "timezone": "America"},
                "content": {"text": "x"},
                "channels": ["email"],
            },
            {"to": "u1", "content": {"text": "x"}, "channels": ["email"], "priority": "urgent"},
        ]
        r = await h.client.post("/v1/notifications/batch", json={"notifications": items})
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["status"] == 422 and body["title"] and body["detail"]
        assert (body["accepted"], body["rejected"]) == (0, 3)
        fields = [res["field"] for res in body["results"]]
        assert fields == ["notifications[0].to", "notifications[1].to.timezone", "notifications[2].priority"]
        for i, res in enumerate(body["results"]):
            assert res["index"] == i and res["status"] == res["code"] == 422 and res["detail"], res
        # Replayed under an idempotency key, it is the same problem.
        key = {"Idempotency-Key": "batch-all-bad"}
        first = await h.client.post("/v1/notifications/batch", json={"notifications": items}, headers=key)
        again = await h.client.post("/v1/notifications/batch", json={"notifications": items}, headers=key)
        assert first.status_code == again.status_code == 422
        assert again.headers["content-type"] == "application/problem+json"
        assert again.json() == first.json()
        # One good item: 202 with per-item results, the bad ones problem-shaped.
        mixed = [*items, {"to": "u1", "content": {"text": "x"}, "channels": ["email"]}]
        r = await h.client.post("/v1/notifications/batch", json={"notifications": mixed})
        assert r.status_code == 202 and r.headers["content-type"] == "application/json"
        assert [res["code"] for res in r.json()["results"]] == [422, 422, 422, 202]
        listed = (await h.client.get("/v1/notifications")).json()["items"]
        assert len(listed) == 1


async def test_bad_json_through_the_fast_send_path_and_the_full_stack_agree(tmp_path: Path) -> None:
    """``POST /v1/notifications`` has its own parser (fast_send.py): the same strict answers."""
    async with running_herald(make_settings(tmp_path)) as h:
        assert (await h.client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        raw = _send('{"k": 1, "k": 2}').encode()
        fast = await h.client.post(
            "/v1/notifications", content=raw, headers={"Content-Type": "application/json"}
        )
        other = await h.client.post(
            "/v1/notifications", content=raw, headers={"Content-Type": "application/json; charset=utf-8"}
        )
        assert fast.status_code == other.status_code == 400
        assert fast.json()["detail"] == other.json()["detail"]
        ok = await h.client.post(
            "/v1/notifications",
            content=_send('{"k": [1.5, -2, "\\ud83d\\ude00"]}').encode(),
            headers={"Content-Type": "application/json"},
        )
        assert ok.status_code == 202, ok.text


async def test_a_time_zone_folder_in_a_stored_profile_does_not_break_routing(tmp_path: Path) -> None:
    """Profiles written before this check (or by hand) may hold ``America``: routing treats it as
    UTC instead of failing on it."""
    async with running_herald(make_settings(tmp_path)) as h:
        assert (await h.client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        user = await h.container.store.get_user("u1")
        assert user is not None
        user.timezone = "America"
        await h.container.store.put_user(user)
        r = await h.client.post(
            "/v1/notifications", json={"to": "u1", "content": {"text": "hi"}, "channels": ["email"]}
        )
        assert r.status_code == 202
        done = await h.wait_final(r.json()["id"], timeout=30)
        assert done["status"] == "completed", done
        assert done["deliveries"][0]["status"] == "sent", done
