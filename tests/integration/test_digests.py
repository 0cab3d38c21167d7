"""Issue 4, digests: held items, one message per (user, category, channel) at the digest time.

Acceptance item 6: digest ``daily@09:00`` in America/New_York, five marketing items during the
day -> one email at 09:00 local next morning listing all five; no items -> nothing sent.
The schedule arithmetic itself (hourly, weekly, DST days) is in tests/unit/test_digest_schedule.py.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from herald.adapters.store import schema as t
from herald.config import load_settings
from herald.domain.errors import ConfigurationError, ServiceUnavailable
from herald.domain.models import OutboundMessage
from herald.ports import DigestPlan, DigestSaved
from herald.services.digest import DigestService
from herald.testing import FakeClock, RecordingProvider
from tests.support.herald import Running, make_settings, running_herald
from tests.support.waits import delivery, eventually, tick, wait_status

NY = ZoneInfo("America/New_York")
NO_SCHEDULER = frozenset({"router", "worker"})  # the test drives the scheduler's ticks itself
MARKETING = {"opt_out": True, "priority": "low", "digest": True, "budget": "3/day"}


def ny(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=NY).timestamp()


def ny_local(iso_or_epoch: str | float | None) -> str:
    assert iso_or_epoch is not None
    if isinstance(iso_or_epoch, str):
        epoch = datetime.fromisoformat(iso_or_epoch.replace("Z", "+00:00")).timestamp()
    else:
        epoch = iso_or_epoch
    return datetime.fromtimestamp(epoch, NY).strftime("%Y-%m-%d %H:%M %Z")


def settings_with(tmp_path: Path, **extra: Any) -> tuple[Any, RecordingProvider]:
    provider = RecordingProvider("rec")
    channels = {"email": {"providers": ["rec"]}, "sms": {"providers": ["rec"]}}
    return make_settings(tmp_path, channels=channels, **extra), provider


async def ny_user(
    h: Running, uid: str = "u1", digest: str = "daily@09:00", quiet: dict[str, str] | None = None
) -> None:
    profile = {"email": f"{uid}@example.com", "timezone": "America/New_York", "data": {"name": uid.upper()}}
    assert (await h.client.put(f"/v1/users/{uid}", json=profile)).status_code == 200
    prefs: dict[str, Any] = {"digests": {"marketing": digest}}
    if quiet is not None:
        prefs["quiet_hours"] = quiet
    r = await h.client.put(f"/v1/users/{uid}/preferences", json=prefs)
    assert r.status_code == 200, r.text


async def send(h: Running, subject: str, uid: str = "u1", **extra: Any) -> str:
    body = {
        "to": uid,
        "content": {"subject": subject, "text": f"about {subject}"},
        "channels": ["email"],
        "category": "marketing",
        **extra,
    }
    r = await h.client.post("/v1/notifications", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def held(h: Running, nid: str) -> dict[str, Any]:
    d = await wait_status(h, nid, "scheduled")
    assert d["reason"] == "digest", d
    return d


async def digests_of(h: Running, uid: str = "u1") -> list[dict[str, Any]]:
    """The user's digest notifications (the only ones herald itself creates), with deliveries."""
    store = h.container.store
    rows = await store.db.run(  # type: ignore[attr-defined]
        lambda c: c.execute(
            select(t.notifications.c.id).where(
                t.notifications.c.type == "digest", t.notifications.c.user_id == uid
            )
        ).all()
    )
    return [(await h.client.get(f"/v1/notifications/{r.id}")).json() for r in rows]


async def sent_digest(h: Running, provider: RecordingProvider, count: int = 1) -> OutboundMessage:
    async def check() -> bool:
        return len(provider.sent) >= count

    await eventually(check)
    await asyncio.sleep(0.3)  # anything more would show up now
    assert len(provider.sent) == count, [m.content.get("subject") for m in provider.sent]
    return provider.sent[-1]


# -- acceptance item 6 ---------------------------------------------------------------------------


async def test_five_items_during_the_day_make_one_email_at_0900_new_york_next_morning(tmp_path: Path) -> None:
    settings, provider = settings_with(tmp_path)
    clock = FakeClock(ny(2026, 6, 10, 9, 30))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await ny_user(h)
        ids = []
        for i, hour in enumerate((10, 12, 14, 17, 21), start=1):
            clock.set(ny(2026, 6, 10, hour, 15))
            nid = await send(h, f"Deal {i}")
            d = await held(h, nid)
            assert ny_local(d["next_attempt_at"]) == "2026-06-11 09:00 EDT"
            ids.append(nid)
        # Five marketing messages and a 3/day budget: held items are not counted against it.
        # The scheduler sleeps until the digest time: that is the next thing due.
        assert await h.container.store.next_due(now=clock.now()) == ny(2026, 6, 11, 9, 0)

        tick(h, clock, ny(2026, 6, 11, 8, 59) - clock.now())
        await asyncio.sleep(0.5)
        assert provider.sent == []
        assert [(await delivery(h, nid))["status"] for nid in ids] == ["scheduled"] * 5

        tick(h, clock, 60)  # 09:00 New York time
        message = await sent_digest(h, provider)
        assert message.address == "u1@example.com" and message.category == "marketing"
        assert message.content["subject"] == "Your marketing digest: 5 new messages"
        for i in range(1, 6):
            assert f"- Deal {i}: about Deal {i}" in message.content["text"]
            assert f"<strong>Deal {i}</strong>" in message.content["html"]
        assert "more" not in message.content["text"]
        assert message.unsubscribe_url  # marketing may be opted out of, from the digest too

        (digest,) = await digests_of(h)
        assert digest["id"] == message.notification_id and digest["category"] == "marketing"
        (dd,) = digest["deliveries"]
        assert dd["status"] == "sent" and len(dd["attempts"]) == 1
        assert ny_local(dd["sent_at"]) == "2026-06-11 09:00 EDT"
        for nid in ids:
            d = await delivery(h, nid)
            assert (d["status"], d["reason"]) == ("skipped", "digested")
        item = await h.container.store.get_deliveries(ids[0])
        assert item[0].content["digest"] == {"notification_id": digest["id"], "delivery_id": dd["id"]}

        # The next morning there is nothing held: nothing is sent.
        tick(h, clock, 86_400)
        await asyncio.sleep(0.5)
        assert len(provider.sent) == 1
        assert len(await digests_of(h)) == 1


async def test_no_items_send_nothing(tmp_path: Path) -> None:
    settings, provider = settings_with(tmp_path)
    clock = FakeClock(ny(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await ny_user(h, "u1")
        await ny_user(h, "u2")
        await held(h, await send(h, "Only for u2", uid="u2"))
        tick(h, clock, ny(2026, 6, 11, 9, 0) - clock.now())
        message = await sent_digest(h, provider)
        assert message.user_id == "u2"  # u1 chose a digest too, but had nothing: no email
        assert await digests_of(h, "u1") == []
        assert (await h.client.get("/v1/notifications", params={"user_id": "u1"})).json()["items"] == []


async def test_a_cancelled_held_item_is_not_in_the_digest(tmp_path: Path) -> None:
    settings, provider = settings_with(tmp_path)
    clock = FakeClock(ny(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await ny_user(h, "u1")
        await ny_user(h, "u2")
        ids = [await send(h, f"Deal {i}") for i in (1, 2, 3)]
        for nid in ids:
            await held(h, nid)
        r = await h.client.post(f"/v1/notifications/{ids[1]}/cancel")
        assert r.status_code == 200, r.text
        assert (await delivery(h, ids[1]))["status"] == "cancelled"
        # u2's only item is cancelled: an empty digest, nothing sent.
        only = await send(h, "Cancelled deal", uid="u2")
        await held(h, only)
        assert (await h.client.post(f"/v1/notifications/{only}/cancel")).status_code == 200

        tick(h, clock, ny(2026, 6, 11, 9, 0) - clock.now())
        message = await sent_digest(h, provider)
        assert message.user_id == "u1"
        assert message.content["subject"] == "Your marketing digest: 2 new messages"
        assert "Deal 1" in message.content["text"] and "Deal 3" in message.content["text"]
        assert "Deal 2" not in message.content["text"] and "Deal 2" not in message.content["html"]
        assert (await delivery(h, ids[1]))["status"] == "cancelled"
        assert await digests_of(h, "u2") == []


async def test_critical_marketing_bypasses_the_digest_and_other_categories_are_not_held(
    tmp_path: Path,
) -> None:
    settings, provider = settings_with(tmp_path)
    clock = FakeClock(ny(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await ny_user(h)
        normal = await send(h, "Weekly deals")
        await held(h, normal)
        critical = await send(h, "Your order is at risk", priority="critical")
        await wait_status(h, critical, "sent")
        transactional = await send(h, "Receipt", category="transactional")
        await wait_status(h, transactional, "sent")
        assert [m.content["subject"] for m in provider.sent] == ["Your order is at risk", "Receipt"]
        assert (await delivery(h, normal))["status"] == "scheduled"


async def test_quiet_hours_apply_to_the_digest_message(tmp_path: Path) -> None:
    settings, provider = settings_with(tmp_path)
    clock = FakeClock(ny(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        await ny_user(h, digest="daily@06:00", quiet={"start": "22:00", "end": "07:00"})
        nid = await send(h, "Deal")
        d = await held(h, nid)
        assert ny_local(d["next_attempt_at"]) == "2026-06-11 06:00 EDT"
        tick(h, clock, ny(2026, 6, 11, 6, 0) - clock.now())

        async def built() -> list[dict[str, Any]]:
            return await digests_of(h)

        (digest,) = await eventually(built)
        (dd,) = digest["deliveries"]
        assert dd["status"] == "scheduled" and ny_local(dd["next_attempt_at"]) == "2026-06-11 07:00 EDT"
        assert provider.sent == []
        tick(h, clock, 3600)
        message = await sent_digest(h, provider)
        assert message.notification_id == digest["id"]


async def test_configured_digest_template_with_first_n_items_and_more(tmp_path: Path) -> None:
    marketing = {**MARKETING, "digest_template": "marketing_digest", "digest_items": 2}
    settings, provider = settings_with(tmp_path, categories={"marketing": marketing})
    clock = FakeClock(ny(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}) as h:
        template = {
            "category": "marketing",
            "channels": {
                "email": {
                    "subject": "{{ count }} deals for {{ user.data.name }}",
                    "text": "{% for i in items %}[{{ i.subject }}]{% endfor %}"
                    "{% if more %} and {{ more }} more{% endif %}",
                    "html": "<ul>{% for i in items %}<li>{{ i.subject }}</li>{% endfor %}</ul>",
                }
            },
        }
        assert (await h.client.put("/v1/templates/marketing_digest", json=template)).status_code in (200, 201)
        await ny_user(h)
        for i in range(1, 6):
            await held(h, await send(h, f"Deal {i}"))
        tick(h, clock, ny(2026, 6, 11, 9, 0) - clock.now())
        message = await sent_digest(h, provider)
        assert message.content["subject"] == "5 deals for U1"
        assert message.content["text"] == "[Deal 1][Deal 2] and 3 more"
        (digest,) = await digests_of(h)
        assert digest["template"] == "marketing_digest"


# -- crash and re-run safety ------------------------------------------------------------------------


async def _three_held_items(h: Running) -> list[str]:
    await ny_user(h)
    ids = [await send(h, f"Deal {i}") for i in (1, 2, 3)]
    for nid in ids:
        await held(h, nid)
    return ids


@pytest.mark.parametrize("crash", ["after_commit", "before_commit"])
async def test_a_scheduler_crash_around_the_digest_commit_then_rerun_sends_one_digest(
    tmp_path: Path, crash: str
) -> None:
    settings, provider = settings_with(tmp_path)
    clock = FakeClock(ny(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}, roles=NO_SCHEDULER) as h:
        ids = await _three_held_items(h)
        store: Any = h.container.store
        original = store.save_digest
        calls: list[str] = []  # what each save_digest call did

        async def die_once(plan: DigestPlan, *, now: float) -> DigestSaved:
            first = not calls
            if crash == "before_commit" and first:
                calls.append("crashed")
                raise ServiceUnavailable("scheduler died before the digest commit")
            saved: DigestSaved = await original(plan, now=now)
            calls.append(str(saved))
            if crash == "after_commit" and first:
                raise ServiceUnavailable("scheduler died right after the digest commit")
            return saved

        store.save_digest = die_once
        clock.set(ny(2026, 6, 11, 9, 0))
        with pytest.raises(ServiceUnavailable):  # the simulated crash happened
            await h.container.scheduler.tick()
        if crash == "before_commit":
            # Nothing was written: the items are still held, nothing was dropped.
            assert [(await delivery(h, nid))["reason"] for nid in ids] == ["digest"] * 3
            assert await digests_of(h) == []
        # The restarted scheduler runs the same step again.
        await h.container.scheduler.tick()
        await h.container.scheduler.tick()
        # after the commit: nothing left to digest, so no second save; before: one save now
        assert calls == (["saved"] if crash == "after_commit" else ["crashed", "saved"])
        message = await sent_digest(h, provider)
        assert message.content["subject"] == "Your marketing digest: 3 new messages"
        assert len(await digests_of(h)) == 1
        for nid in ids:
            assert (await delivery(h, nid))["reason"] == "digested"


async def test_two_schedulers_racing_send_one_digest(tmp_path: Path) -> None:
    settings, provider = settings_with(tmp_path)
    clock = FakeClock(ny(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}, roles=NO_SCHEDULER) as h:
        await _three_held_items(h)
        c = h.container
        a = DigestService(c.store, clock, c.catalog, c.unsubscribe)
        b = DigestService(c.store, clock, c.catalog, c.unsubscribe)
        clock.set(ny(2026, 6, 11, 9, 0))
        await asyncio.gather(a.run_due(), b.run_due(), a.run_due())
        c.queue.wake("email")
        message = await sent_digest(h, provider)
        assert message.content["subject"] == "Your marketing digest: 3 new messages"
        assert len(await digests_of(h)) == 1


async def test_an_item_arriving_after_its_digest_was_sent_waits_for_the_next_one(tmp_path: Path) -> None:
    settings, provider = settings_with(tmp_path)
    clock = FakeClock(ny(2026, 6, 10, 12, 0))
    async with running_herald(settings, clock=clock, providers={"rec": provider}, roles=NO_SCHEDULER) as h:
        await _three_held_items(h)
        late = await send(h, "Late deal")
        await held(h, late)
        # The router computed 09:00 on the 11th but committed after that digest was written:
        # park it (tomorrow) first, digest the others, then give it the already-used time.
        store: Any = h.container.store
        d = t.deliveries
        await store.db.run(
            lambda conn: conn.execute(
                update(d).where(d.c.notification_id == late).values(due_at=ny(2026, 6, 12, 9, 0))
            )
        )
        clock.set(ny(2026, 6, 11, 9, 0))
        await h.container.scheduler.tick()
        await sent_digest(h, provider)
        await store.db.run(
            lambda conn: conn.execute(
                update(d).where(d.c.notification_id == late).values(due_at=ny(2026, 6, 11, 9, 0))
            )
        )
        clock.set(ny(2026, 6, 11, 9, 5))
        await h.container.scheduler.tick()
        dl = await delivery(h, late)
        assert (dl["status"], dl["reason"]) == ("scheduled", "digest")
        assert ny_local(dl["next_attempt_at"]) == "2026-06-12 09:00 EDT"  # the next digest, not a second one
        assert len(await digests_of(h)) == 1
        clock.set(ny(2026, 6, 12, 9, 0))
        await h.container.scheduler.tick()
        message = await sent_digest(h, provider, count=2)
        assert "Late deal" in message.content["text"]
        assert message.content["subject"] == "Your marketing digest: 1 new message"


# -- preferences ----------------------------------------------------------------------------------


async def test_bad_digest_schedule_is_422_naming_the_field_and_stores_nothing(tmp_path: Path) -> None:
    # tests/integration/test_who_hears_what.py covers more bad values; this is the digest case.
    settings, provider = settings_with(tmp_path)
    async with running_herald(settings, providers={"rec": provider}) as h:
        await ny_user(h)
        before = (await h.client.get("/v1/users/u1/preferences")).json()
        assert before["digests"]["marketing"] == {"value": "daily@09:00", "source": "user"}
        r = await h.client.put("/v1/users/u1/preferences", json={"digests": {"marketing": "daily@9am"}})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == "digests.marketing"
        assert "daily@HH:MM" in r.json()["detail"]
        assert (await h.client.get("/v1/users/u1/preferences")).json() == before


def test_digest_options_in_configuration_are_checked_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "herald.toml"
    path.write_text('[categories.system]\ndigest_template = "system_digest"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"categories\.system: .*digest is false"):
        load_settings(path)
    path.write_text("[categories.marketing]\ndigest = true\ndigest_items = 0\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"categories\.marketing\.digest_items"):
        load_settings(path)
    path.write_text('[categories.marketing]\ndigest = true\ndigest_template = "m"\n', encoding="utf-8")
    category = load_settings(path).categories["marketing"]
    assert (category.digest_template, category.digest_items) == ("m", 10)
