"""Digest: at a user's digest time, one message per (user, category, channel) replaces the
deliveries held for it.

The router holds a delivery of a digest-enabled category for a user who chose a digest for it
(``scheduled``, reason ``digest``, due at the next digest time). The scheduler calls
:meth:`DigestService.run_due` on every tick; for each (user, category, channel) with held
items due, it renders the category's digest template (``categories.<name>.digest_template``, a
stored template, or the built-in one) with ``items`` (the first ``digest_items``), ``count``,
``more`` and ``user``, and writes in ONE transaction the digest notification, its delivery and
the items marked ``skipped``/``digested`` (their content names the digest). The digest delivery
then goes through the normal queue, worker, retries and status log.

Crash and concurrency safety:

* one transaction: a crash before the commit changes nothing (the items are still held and the
  next tick builds the digest); after it, the items are no longer held, so nothing is sent twice
  and nothing is dropped;
* the digest's ids derive from (user, category, channel, digest time): the same digest cannot be
  written twice, and late items for a digest time already sent wait for the next one;
* the write checks that every item it replaces is still held: an item cancelled (or expired)
  meanwhile makes the write a no-op and the digest is rebuilt without it.

Held items never consume the category's per-user budget (the user gets one message, not N),
and the digest message is not counted against it either; quiet hours apply to the digest
message where the category respects them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from markupsafe import Markup

from herald.domain.addresses import address_for
from herald.domain.errors import HeraldError, TemplateError
from herald.domain.models import (
    JSON,
    Category,
    Delivery,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Preferences,
    Priority,
    Reason,
    Recipient,
    Template,
    User,
)
from herald.domain.quiet_hours import next_digest_time, quiet_until, zone
from herald.ports import Clock, DigestGroup, DigestPlan, RecipientContext, Store
from herald.services import render_pool
from herald.services.catalog import Catalog
from herald.services.rendering import render_variant
from herald.services.route import channel_enabled
from herald.services.signing import UnsubscribeSigner

log = structlog.get_logger("herald.digest")

S = DeliveryStatus

_HEAD = "Your {{ category }} digest: {{ count }} new {{ 'message' if count == 1 else 'messages' }}"
_LIST_TEXT = (
    "{% for item in items %}- {{ item.headline }}{% if item.detail %}: {{ item.detail }}{% endif %}\n"
    "{% endfor %}{% if more %}... and {{ more }} more\n{% endif %}"
)
_LIST_HTML = (
    "<p>{{ count }} new {{ 'message' if count == 1 else 'messages' }}:</p><ul>{% for item in items %}"
    "<li><strong>{{ item.headline }}</strong>{% if item.detail %}<br>{{ item.detail }}{% endif %}</li>"
    "{% endfor %}</ul>{% if more %}<p>... and {{ more }} more</p>{% endif %}"
)
_LIST_SHORT = (
    "{{ items | map(attribute='headline') | join('; ') }}{% if more %}; and {{ more }} more{% endif %}"
)

#: Used when the category names no digest template (or it has no variant for the channel, or
#: fails to render: a digest is never lost to a template mistake).
BUILTIN_DIGEST: dict[str, dict[str, str]] = {
    "email": {"subject": _HEAD, "text": "{{ count }} new:\n\n" + _LIST_TEXT, "html": _LIST_HTML},
    "sms": {"text": "{{ count }} new {{ category }}: " + _LIST_SHORT},
    "push": {"title": _HEAD, "body": _LIST_SHORT},
    "in_app": {"title": _HEAD, "body": _LIST_TEXT},
    "webhook": {"body": _LIST_TEXT},
    "chat": {"title": _HEAD, "text": _LIST_TEXT},
}
_GENERIC = {"title": _HEAD, "text": _LIST_TEXT, "body": _LIST_TEXT}

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def digest_ids(user_id: str, category: str, channel: str, at: float) -> tuple[str, str]:
    """(notification id, delivery id) of the digest for (user, category, channel, time).

    Same layout as :func:`herald.domain.models.new_id` (48 bits of milliseconds, here the digest
    time's, then 80 bits, here of a hash) so the ids sort by time like every other id.
    """
    ms = round(at * 1000)
    key = "\x00".join((user_id, category, channel, str(ms))).encode()
    value = ms << 80 | int.from_bytes(hashlib.sha256(key).digest()[:10], "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    suffix = "".join(reversed(chars))
    return f"ntf_{suffix}", f"dlv_{suffix}"


def _text(content: JSON, key: str) -> str | None:
    value = content.get(key)
    return value if isinstance(value, str) and value else None


def item_view(d: Delivery, timezone: str | None) -> dict[str, Any]:
    """One held item as a digest template sees it: its rendered content and when it came."""
    c = d.content
    subject, title, text, body = (_text(c, k) for k in ("subject", "title", "text", "body"))
    html = _text(c, "html")
    headline = subject or title or text or body or ""
    return {
        "notification_id": d.notification_id,
        "delivery_id": d.id,
        "subject": subject,
        "title": title,
        "text": text,
        "body": body,
        # Rendered (and escaped) by herald from its own template: embeddable as it is.
        "html": Markup(html) if html else None,  # noqa: S704 - already-rendered template output
        "url": _text(c, "url"),
        "headline": headline,
        "detail": (text or body) if (subject or title) else None,
        "at": datetime.fromtimestamp(d.created_at, UTC).astimezone(zone(timezone)).isoformat(),
    }


class DigestService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        catalog: Catalog,
        unsubscribe: UnsubscribeSigner,
        *,
        batch: int = 200,
        max_batches: int = 10,
    ) -> None:
        self.store = store
        self.clock = clock
        self.catalog = catalog
        self.unsubscribe = unsubscribe
        self.batch = batch
        self.max_batches = max_batches

    async def run_due(self) -> list[str]:
        """Build every digest that is due; return the channels that got queued work."""
        now = self.clock.now()
        templates: dict[str, Template | None] = {}
        channels: set[str] = set()
        for _ in range(self.max_batches):
            groups = await self.store.due_digest_groups(now=now, limit=self.batch)
            for g in groups:
                try:
                    if await self.digest(g, now, templates):
                        channels.add(g.channel)
                except HeraldError:
                    raise  # the backend: the scheduler logs it and tries again next tick
                except Exception:
                    # One broken digest must not stop the scheduler (promotions, leases) for all;
                    # its items stay held and are tried again on the next tick.
                    log.exception("digest.failed", user_id=g.user_id, category=g.category, channel=g.channel)
            if len(groups) < self.batch:
                break
        return sorted(channels)

    async def digest(
        self, g: DigestGroup, now: float, templates: dict[str, Template | None] | None = None
    ) -> bool:
        """Send the group's digest (True when its delivery was queued now)."""
        templates = {} if templates is None else templates
        for _ in range(3):
            items = await self.store.held_digest_items(g.user_id, g.category, g.channel, now=now)
            if not items:
                return False  # nothing held (or digested meanwhile by another scheduler)
            ctx = await self.store.recipient_context([g.user_id], with_devices=g.channel == "push")
            plan = await self.plan(g, items, ctx, now, templates)
            saved = await self.store.save_digest(plan, now=now)
            d = plan.delivery
            if saved == "saved":
                log.info(
                    "digest.built",
                    notification_id=plan.notification.id,
                    delivery_id=d.id,
                    user_id=g.user_id,
                    category=g.category,
                    channel=g.channel,
                    items=len(items),
                    status=d.status.value,
                    reason=d.reason,
                )
                return d.status == S.QUEUED
            if saved == "exists":
                # Items that arrived for a digest time whose digest was already written wait for
                # the user's next digest (or go on their own if the user turned digests off).
                prefs, user = ctx.preferences.get(g.user_id), ctx.users.get(g.user_id)
                due = self._next_time(prefs, g.category, user, now)
                moved = await self.store.rehold_digest_items([i.id for i in items], due_at=due, now=now)
                log.info("digest.late_items", user_id=g.user_id, category=g.category, items=moved, due=due)
                return False
            # "changed": an item was cancelled, expired or digested meanwhile; read again.
        log.warning("digest.contended", user_id=g.user_id, category=g.category, channel=g.channel)
        return False

    def _next_time(
        self, prefs: Preferences | None, category: str, user: User | None, now: float
    ) -> float | None:
        schedule = prefs.digests.get(category) if prefs is not None else None
        if not schedule or user is None:
            return None
        try:
            return next_digest_time(schedule, user.timezone, now)
        except ValueError:
            return None

    async def plan(
        self,
        g: DigestGroup,
        items: Sequence[Delivery],
        ctx: RecipientContext,
        now: float,
        templates: dict[str, Template | None],
    ) -> DigestPlan:
        """The digest notification, its delivery (rendered, or skipped saying why) and the items."""
        category = self.catalog.categories.get(g.category) or Category(name=g.category)
        user = ctx.users.get(g.user_id)
        prefs = ctx.preferences.get(g.user_id)
        at = max(i.due_at for i in items)
        nid, did = digest_ids(g.user_id, g.category, g.channel, at)
        priority = Priority.from_rank(min(i.priority.rank for i in items))
        count, limit = len(items), category.digest_items
        d = Delivery(
            id=did,
            notification_id=nid,
            user_id=g.user_id,
            channel=g.channel,
            status=S.PENDING,
            priority=priority,
            category=g.category,
            address=None,
            content={},
            due_at=now,
        )
        template: Template | None = None
        devices = ctx.devices.get(g.user_id, [])
        address = address_for(g.channel, user, devices) if user is not None else None
        if user is None:
            d.status, d.reason = S.SKIPPED, Reason.USER_DELETED.value
        elif g.channel not in self.catalog.enabled_channels:
            d.status, d.reason = S.SKIPPED, Reason.CHANNEL_DISABLED.value
        elif not channel_enabled(prefs, category, g.channel)[0]:
            d.status, d.reason = S.SKIPPED, Reason.OPTED_OUT.value  # opted out since the items came
        elif not address:
            d.status, d.reason = S.SKIPPED, Reason.NO_ADDRESS.value
        elif address in ctx.suppressed.get(g.channel, set()):
            d.status, d.reason = S.SKIPPED, Reason.INVALID_ADDRESS.value
        else:
            views = [item_view(i, user.timezone) for i in items[:limit]]
            more = max(0, count - limit)
            context: JSON = {
                "items": views,
                "count": count,
                "more": more,
                "user": user.template_view(),
                "category": g.category,
                "digest": {
                    "at": datetime.fromtimestamp(at, UTC).astimezone(zone(user.timezone)).isoformat(),
                    "schedule": prefs.digests.get(g.category) if prefs is not None else None,
                },
                "data": {"items": views, "count": count, "more": more},
                "notification": {"id": nid, "category": g.category, "priority": priority.value},
            }
            d.content, template = await self._render(category, g.channel, user, context, templates)
            d.address = address
            if g.channel == "webhook":
                d.content["items"] = [
                    {k: v[k] for k in ("notification_id", "headline", "detail")} for v in views
                ]
            if g.channel == "push" and devices:
                device = devices[-1]
                d.content["_meta"] = {
                    "device_id": device.id,
                    "device_kind": device.kind,
                    "device_registered_at": device.created_at,
                }
            if g.channel == "email" and category.opt_out:
                d.content["unsubscribe_url"] = self.unsubscribe.url(g.user_id, category.name, g.channel)
            d.status = S.QUEUED
            quiet = prefs.quiet_hours if prefs is not None else None
            if quiet and category.quiet_hours and priority != Priority.CRITICAL:
                until = quiet_until(quiet, user.timezone, now)
                if until is not None:
                    d.status, d.due_at = S.SCHEDULED, until
        pointer = {"notification_id": nid, "delivery_id": did}
        notification = Notification(
            id=nid,
            status=NotificationStatus.ROUTED,
            recipients=[Recipient(user_id=g.user_id)],
            template=template.name if template is not None else None,
            template_version=template.version if template is not None else None,
            content=None,
            data={
                "digest": {
                    "at": at,
                    "count": count,
                    # Each item also names the digest (content["digest"]); this list is bounded.
                    "items": [
                        {"notification_id": i.notification_id, "delivery_id": i.id} for i in items[:1000]
                    ],
                }
            },
            channels=[g.channel],
            category=g.category,
            priority=priority,
            recipients_total=1,
            recipients_routed=1,
            created_at=now,
            routed_at=now,
        )
        return DigestPlan(
            notification=notification,
            delivery=d,
            item_contents={i.id: {**i.content, "digest": pointer} for i in items},
        )

    async def _render(
        self,
        category: Category,
        channel: str,
        user: User,
        context: JSON,
        templates: dict[str, Template | None],
    ) -> tuple[JSON, Template | None]:
        name = category.digest_template
        if name is not None:
            if name not in templates:
                templates[name] = await self.store.get_template(name)
            template = templates[name]
            locale = user.locale or self.catalog.default_locale
            variant = template.variant(channel, locale) if template is not None else None
            if template is None:
                log.warning("digest.template_missing", template=name, category=category.name)
            elif variant is None:
                log.info("digest.template_has_no_variant", template=name, channel=channel)
            else:
                try:
                    return await render_pool.for_routing(render_variant, variant, context), template
                except TemplateError as exc:
                    log.warning("digest.template_failed", template=name, channel=channel, error=exc.detail)
        builtin = BUILTIN_DIGEST.get(channel, _GENERIC)
        return await render_pool.for_routing(render_variant, builtin, context), None


__all__ = ["BUILTIN_DIGEST", "DigestService", "digest_ids", "item_view"]
