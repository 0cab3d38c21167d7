"""DigestService.plan: what one digest contains, how it renders, and when it is skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from herald.adapters.store.sql import SqlStore
from herald.domain.models import (
    Category,
    Delivery,
    DeliveryStatus,
    Preferences,
    Priority,
    Template,
    User,
)
from herald.ports import DigestGroup, RecipientContext
from herald.services.catalog import Catalog
from herald.services.digest import DigestService, digest_ids
from herald.services.signing import Signer, UnsubscribeSigner
from herald.testing import FakeClock, memory_store

S = DeliveryStatus
NOW = 1_800_000_000.0
ALL = frozenset({"email", "sms", "push", "in_app", "webhook", "chat"})


def catalog(**marketing: Any) -> Catalog:
    return Catalog(
        categories={"marketing": Category("marketing", priority=Priority.LOW, digest=True, **marketing)},
        default_category="marketing",
        enabled_channels=ALL,
    )


def item(i: int, channel: str = "email", **content: object) -> Delivery:
    return Delivery(
        id=f"dlv_{i:03d}",
        notification_id=f"ntf_{i:03d}",
        user_id="u1",
        channel=channel,
        status=S.SCHEDULED,
        priority=Priority.LOW,
        category="marketing",
        address="u1@example.com",
        content=content or {"subject": f"Deal {i}", "text": f"about {i}", "html": f"<p>Deal <b>{i}</b></p>"},
        reason="digest",
        due_at=NOW - 60,
        created_at=NOW - 3600 + i,
    )


def context(
    user: User | None = None, prefs: Preferences | None = None, *, deleted: bool = False
) -> RecipientContext:
    user = user if user is not None else User(id="u1", email="u1@example.com", phone="+15550001")
    return RecipientContext(
        users={} if deleted else {"u1": user},
        preferences={"u1": prefs} if prefs is not None else {},
        devices={},
        suppressed={},
    )


@pytest.fixture
async def store() -> AsyncIterator[SqlStore]:
    s = memory_store()
    await s.start()
    yield s
    await s.close()


def service(store: SqlStore, cat: Catalog) -> DigestService:
    return DigestService(store, FakeClock(NOW), cat, UnsubscribeSigner(Signer(b"k" * 32), "http://h"))


async def test_builtin_sms_lists_the_first_n_and_counts_the_rest(store: SqlStore) -> None:
    svc = service(store, catalog(digest_items=3))
    items = [item(i, "sms", text=f"Flash sale {i}") for i in range(1, 6)]
    plan = await svc.plan(DigestGroup("u1", "marketing", "sms"), items, context(), NOW, {})
    d = plan.delivery
    assert (d.status, d.address, d.reason) == (S.QUEUED, "+15550001", None)
    assert d.content == {"text": "5 new marketing: Flash sale 1; Flash sale 2; Flash sale 3; and 2 more"}
    assert (plan.notification.id, d.id) == digest_ids("u1", "marketing", "sms", NOW - 60)
    assert plan.notification.data["digest"]["count"] == 5
    assert [i["delivery_id"] for i in plan.notification.data["digest"]["items"]] == [i.id for i in items]
    pointer = {"notification_id": plan.notification.id, "delivery_id": d.id}
    assert plan.item_contents["dlv_001"] == {"text": "Flash sale 1", "digest": pointer}


async def test_builtin_email_escapes_item_text_and_adds_unsubscribe(store: SqlStore) -> None:
    svc = service(store, catalog())
    evil = item(1, subject="<script>x</script>", text="a & b")
    plan = await svc.plan(DigestGroup("u1", "marketing", "email"), [evil, item(2)], context(), NOW, {})
    c = plan.delivery.content
    assert c["subject"] == "Your marketing digest: 2 new messages"
    assert "&lt;script&gt;" in c["html"] and "<script>" not in c["html"]
    assert "- <script>x</script>: a & b" in c["text"]  # plain text is not HTML
    assert c["unsubscribe_url"].startswith("http://h/")


async def test_configured_template_sees_items_html_and_user(store: SqlStore) -> None:
    await store.put_template(
        Template(
            name="md",
            version=0,
            category="marketing",
            channels={
                "email": {
                    "subject": "{{ count }} for {{ user.id }}",
                    "html": "{% for i in items %}{{ i.html }}{% endfor %}",
                }
            },
        )
    )
    svc = service(store, catalog(digest_template="md"))
    plan = await svc.plan(DigestGroup("u1", "marketing", "email"), [item(1)], context(), NOW, {})
    assert plan.delivery.content["subject"] == "1 for u1"
    assert plan.delivery.content["html"] == "<p>Deal <b>1</b></p>"  # already rendered: not escaped again
    assert plan.notification.template == "md"


async def test_a_broken_or_missing_template_falls_back_to_the_builtin(store: SqlStore) -> None:
    await store.put_template(
        Template(name="bad", version=0, category="marketing", channels={"email": {"subject": "{{ 1 / 0 }}"}})
    )
    for name in ("bad", "missing"):
        svc = service(store, catalog(digest_template=name))
        plan = await svc.plan(DigestGroup("u1", "marketing", "email"), [item(1)], context(), NOW, {})
        assert plan.delivery.content["subject"] == "Your marketing digest: 1 new message"
        assert plan.notification.template is None


async def test_digest_is_skipped_saying_why_and_items_still_point_to_it(store: SqlStore) -> None:
    svc = service(store, catalog())
    g = DigestGroup("u1", "marketing", "email")
    opted_out = Preferences(user_id="u1", categories={"marketing": {"email": False}})
    cases = [
        (context(deleted=True), "user_deleted"),  # the user was deleted while items were held
        (context(prefs=opted_out), "opted_out"),  # opted out since the items came
        (context(User(id="u1")), "no_address"),
    ]
    for ctx, reason in cases:
        plan = await svc.plan(g, [item(1)], ctx, NOW, {})
        assert (plan.delivery.status, plan.delivery.reason) == (S.SKIPPED, reason)
        assert plan.item_contents["dlv_001"]["digest"]["delivery_id"] == plan.delivery.id


async def test_quiet_hours_schedule_the_digest_for_their_end(store: SqlStore) -> None:
    svc = service(store, catalog())
    prefs = Preferences(user_id="u1", quiet_hours={"start": "00:00", "end": "23:59"})
    user = User(id="u1", email="u1@example.com", timezone="UTC")
    plan = await svc.plan(DigestGroup("u1", "marketing", "email"), [item(1)], context(user, prefs), NOW, {})
    assert plan.delivery.status == S.SCHEDULED and plan.delivery.due_at > NOW
    assert plan.delivery.reason is None  # an ordinary schedule: promote_scheduled takes it
