"""Issue 4: who hears what, when — quiet hours, per-user budgets, preference validation."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from herald.domain.errors import ConfigurationError
from herald.testing import FakeClock, RecordingProvider
from tests.support.herald import Running, make_settings, running_herald
from tests.support.waits import delivery, eventually, tick, wait_status

PARIS = ZoneInfo("Europe/Paris")
MAIL = {"subject": "Hi", "text": "hello"}
NIGHT = {"start": "22:00", "end": "07:00"}


def paris(y: int, mo: int, d: int, h: int, mi: int) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=PARIS).timestamp()


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def recording_settings(tmp_path: Path, **extra: Any) -> tuple[Any, RecordingProvider]:
    provider = RecordingProvider("rec")
    settings = make_settings(tmp_path, channels={"email": {"providers": ["rec"]}}, **extra)
    return settings, provider


async def paris_user(h: Running, uid: str = "u1", quiet: dict[str, str] | None = NIGHT) -> None:
    r = await h.client.put(
        f"/v1/users/{uid}", json={"email": f"{uid}@example.com", "timezone": "Europe/Paris"}
    )
    assert r.status_code == 200, r.text
    if quiet is not None:
        r = await h.client.put(f"/v1/users/{uid}/preferences", json={"quiet_hours": quiet})
        assert r.status_code == 200, r.text


async def send(h: Running, uid: str = "u1", **extra: Any) -> str:
    body = {"to": uid, "content": MAIL, "channels": ["email"], **extra}
    r = await h.client.post("/v1/notifications", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


# -- quiet hours ---------------------------------------------------------------------------------


async def _deferred_to(h: Running, clock: FakeClock, provider: RecordingProvider, nid: str) -> float:
    d = await wait_status(h, nid, "scheduled")
    due = parse_iso(d["next_attempt_at"])
    tick(h, clock, due - clock.now() - 60)  # one minute before the end of quiet hours
    await asyncio.sleep(0.4)
    assert (await delivery(h, nid))["status"] == "scheduled" and provider.sent == []
    tick(h, clock, 60)
    await wait_status(h, nid, "sent")
    assert len(provider.sent) == 1
    return due


async def test_marketing_at_2330_paris_goes_at_0700_local(tmp_path: Path) -> None:
    settings, provider = recording_settings(tmp_path)
    clock = FakeClock(paris(2026, 6, 10, 23, 30))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await paris_user(h)
        nid = await send(h, category="marketing")
        due = await _deferred_to(h, clock, provider, nid)
        assert due == paris(2026, 6, 11, 7, 0)


async def test_critical_at_2330_goes_at_once(tmp_path: Path) -> None:
    settings, provider = recording_settings(tmp_path)
    clock = FakeClock(paris(2026, 6, 10, 23, 30))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await paris_user(h)
        nid = await send(h, category="marketing", priority="critical")
        await wait_status(h, nid, "sent")
        # A category that ignores quiet hours (security) also goes at once.
        nid2 = await send(h, category="security")
        await wait_status(h, nid2, "sent")
        assert len(provider.sent) == 2


async def test_quiet_hours_across_the_october_dst_change(tmp_path: Path) -> None:
    settings, provider = recording_settings(tmp_path)
    clock = FakeClock(paris(2026, 10, 24, 23, 30))  # Saturday; clocks go back at 03:00 Sunday
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await paris_user(h)
        nid = await send(h, category="marketing")
        due = await _deferred_to(h, clock, provider, nid)
        assert datetime.fromtimestamp(due, PARIS).strftime("%Y-%m-%d %H:%M") == "2026-10-25 07:00"
        assert due == datetime(2026, 10, 25, 6, 0, tzinfo=UTC).timestamp()


async def test_send_at_inside_quiet_hours_is_deferred_to_their_end(tmp_path: Path) -> None:
    settings, provider = recording_settings(tmp_path)
    clock = FakeClock(paris(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await paris_user(h)
        send_at = datetime.fromtimestamp(paris(2026, 6, 10, 23, 0), UTC).isoformat()
        nid = await send(h, category="marketing", send_at=send_at)
        d = await wait_status(h, nid, "scheduled")
        assert parse_iso(d["next_attempt_at"]) == paris(2026, 6, 11, 7, 0)


# -- budgets -------------------------------------------------------------------------------------


async def test_budget_three_a_day_under_fifty_concurrent_sends(tmp_path: Path) -> None:
    settings, provider = recording_settings(tmp_path)
    clock = FakeClock(paris(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await paris_user(h, quiet=None)
        marketing = await asyncio.gather(*(send(h, category="marketing") for _ in range(50)))
        transactional = [await send(h, category="transactional") for _ in range(5)]

        async def final(nid: str) -> dict[str, Any]:
            async def check() -> dict[str, Any] | None:
                d = await delivery(h, nid)
                return d if d.get("status") in ("sent", "skipped") else None

            result: dict[str, Any] = await eventually(check, timeout=20)
            return result

        outcomes = [await final(nid) for nid in marketing]
        counts = Counter((d["status"], d["reason"]) for d in outcomes)
        assert counts == {("sent", None): 3, ("skipped", "rate_limited"): 47}, counts
        for nid in transactional:
            assert (await final(nid))["status"] == "sent"
        assert len(provider.sent) == 8

        # A critical marketing message is neither blocked nor counted.
        nid = await send(h, category="marketing", priority="critical")
        assert (await final(nid))["status"] == "sent"

        # The window slides: a day later the budget is available again.
        clock.advance(86_401)
        nid = await send(h, category="marketing")
        assert (await final(nid))["status"] == "sent"


def test_bad_budget_in_configuration_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    from herald.config import load_settings

    path = tmp_path / "herald.toml"
    path.write_text('[categories.marketing]\nbudget = "3 per day"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"categories\.marketing\.budget"):
        load_settings(path)


# -- preference validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00", "end": "7am"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end"),
        ({"digests": {"marketing": "daily@9"}}, "digests.marketing"),
        ({"digests": {"marketing": "weekly@funday 09:00"}}, "digests.marketing"),
        ({"digests": {"security": "daily@09:00"}}, "digests.security"),
        ({"digests": {"nope": "off"}}, "digests.nope"),
        ({"categories": {"nope": {"email": False}}}, "categories.nope"),
        ({"channels": {"pigeon": False}}, "channels.pigeon"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
    ],
)
async def test_bad_preferences_are_422_naming_the_field_and_store_nothing(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    settings, provider = recording_settings(tmp_path)
    async with running_herald(settings, providers={"rec": provider}) as h:
        await paris_user(h)
        good = {"channels": {"sms": False}, "quiet_hours": NIGHT, "digests": {"marketing": "daily@09:00"}}
        assert (await h.client.put("/v1/users/u1/preferences", json=good)).status_code == 200
        before = (await h.client.get("/v1/users/u1/preferences")).json()

        r = await h.client.put("/v1/users/u1/preferences", json={"channels": {"email": False}, **body})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == field, r.json()
        assert (await h.client.get("/v1/users/u1/preferences")).json() == before


async def test_bad_user_timezone_is_422_naming_the_field(tmp_path: Path) -> None:
    settings, provider = recording_settings(tmp_path)
    async with running_herald(settings, providers={"rec": provider}) as h:
        bad = {"email": "u9@example.com", "timezone": "Europe/Atlantis"}
        r = await h.client.put("/v1/users/u9", json=bad)
        assert r.status_code == 422 and r.json()["field"] == "timezone", r.text
        assert (await h.client.get("/v1/users/u9")).status_code == 404
