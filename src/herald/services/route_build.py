"""Route, the build: one notification's deliveries for a list of recipients, decided and rendered.

For each (recipient, channel) the domain's rule (:func:`herald.domain.audience.decide`) says
deliver, skip (with its reason) or hold (quiet hours, digest); what is delivered or held is
rendered in the user's locale. A fallback notification walks its chain instead: the first
channel that can take the message gets it. Runs on the routing thread (``render_pool``), never
on the event loop; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from herald.domain import audience
from herald.domain.audience import Action, Decision, Facts, Hold
from herald.domain.errors import TemplateError
from herald.domain.models import (
    JSON,
    Category,
    Delivery,
    DeliveryStatus,
    Device,
    Notification,
    Preferences,
    Reason,
    Recipient,
    Template,
    User,
    new_id,
)
from herald.ports import Clock, RecipientContext
from herald.services.catalog import Catalog
from herald.services.link_tracking import LinkTracker
from herald.services.rendering import RenderBudgetError, render_variant
from herald.services.signing import UnsubscribeSigner

log = structlog.get_logger("herald.route")


class DeliveryBuilder:
    """Builds the deliveries of a routing pass (see the module's docstring)."""

    def __init__(
        self,
        catalog: Catalog,
        clock: Clock,
        unsubscribe: UnsubscribeSigner,
        tracking: LinkTracker | None = None,
    ) -> None:
        self.catalog = catalog
        self.clock = clock
        self.unsubscribe = unsubscribe
        self.tracking = tracking  # email open and click tracking (services/link_tracking.py)
        self._over_budget: dict[tuple[str, str, str], RenderBudgetError] = {}

    def build(
        self,
        n: Notification,
        template: Template | None,
        recipients: Sequence[Recipient],
        ctx: RecipientContext,
    ) -> list[Delivery]:
        category = self.catalog.category(n.category)
        now = self.clock.now()
        channels = n.channels or []
        out: list[Delivery] = []
        for r in recipients:
            if n.fallback:
                out += self.chain(n, template, category, r.user_id, ctx, now, {})
                continue
            user = ctx.users.get(r.user_id)
            prefs = ctx.preferences.get(r.user_id)
            devices = ctx.devices.get(r.user_id, [])
            for ch in channels:
                out.append(
                    self.delivery(
                        n,
                        template,
                        category,
                        ch,
                        r.user_id,
                        user,
                        prefs,
                        devices,
                        ctx.suppressed.get(ch, set()),
                        now,
                    )
                )
        return out

    def chain(
        self,
        n: Notification,
        template: Template | None,
        category: Category,
        user_id: str,
        ctx: RecipientContext,
        now: float,
        existing: dict[str, Delivery],
    ) -> list[Delivery]:
        """Walk the fallback chain: the first channel that can take the message gets it; a
        channel without address, opted out or failed for good hands over to the next one."""
        out: list[Delivery] = []
        chain = n.channels or []
        for i, ch in enumerate(chain):
            prev = existing.get(ch)
            if prev is not None:
                if audience.moves_on(prev.status, prev.reason):
                    continue
                return out
            d = self.delivery(
                n,
                template,
                category,
                ch,
                user_id,
                ctx.users.get(user_id),
                ctx.preferences.get(user_id),
                ctx.devices.get(user_id, []),
                ctx.suppressed.get(ch, set()),
                now,
            )
            out.append(d)
            if audience.moves_on(d.status, d.reason):
                continue
            if i < len(chain) - 1 and d.status in (DeliveryStatus.QUEUED, DeliveryStatus.SCHEDULED):
                d.content.setdefault("_meta", {})["fallback"] = True
            return out
        return out

    def delivery(
        self,
        n: Notification,
        template: Template | None,
        category: Category,
        channel: str,
        user_id: str,
        user: User | None,
        prefs: Preferences | None,
        devices: list[Device],
        suppressed: set[str],
        now: float,
    ) -> Delivery:
        """One (recipient, channel): skipped (its ``delivery.skipped`` is told once written,
        RouterService), failed to render, or rendered and queued/scheduled as decided."""
        decision = audience.decide(
            Facts(
                category=category,
                channel=channel,
                priority=n.priority,
                user=user,
                prefs=prefs,
                devices=devices,
                suppressed=suppressed,
                enabled_channels=self.catalog.enabled_channels,
                now=now,
                send_at=n.send_at,
            )
        )
        d = Delivery(
            id=new_id("dlv"),
            notification_id=n.id,
            user_id=user_id,
            channel=channel,
            status=DeliveryStatus.PENDING,
            priority=n.priority,
            category=category.name,
            address=None,
            content={},
            due_at=now,
            expires_at=n.expires_at,
        )
        if decision.action is Action.SKIP:
            assert decision.reason is not None
            d.status, d.reason = DeliveryStatus.SKIPPED, decision.reason.value
            return d
        assert user is not None
        d.address = decision.address
        try:
            d.content = self._render(n, template, channel, user)
        except TemplateError as exc:
            d.status = DeliveryStatus.FAILED
            d.reason = Reason.RENDER_ERROR.value
            d.content = {"error": exc.detail}
            log.warning("delivery.render_failed", delivery_id=d.id, notification_id=n.id, error=exc.detail)
            return d
        if channel == "push":
            device = devices[-1]  # the most recently registered active device
            d.content["_meta"] = {
                "device_id": device.id, "device_kind": device.kind, "device_registered_at": device.created_at,
            }
        if channel == "email" and category.opt_out:
            d.content["unsubscribe_url"] = self.unsubscribe.url(user_id, category.name, channel)
        if channel == "email":
            self._track(d, category)
        self._timed(d, decision, now)
        return d

    @staticmethod
    def _timed(d: Delivery, decision: Decision, now: float) -> None:
        d.status, d.due_at = decision.status(now), decision.due_at
        if decision.hold is Hold.DIGEST:
            # Held for the user's digest (services/digest.py); quiet hours apply to the digest.
            d.reason = Reason.DIGEST.value
            log.info(
                "delivery.held_for_digest", delivery_id=d.id, notification_id=d.notification_id, due=d.due_at
            )
        elif decision.hold is Hold.QUIET_HOURS:
            # Deferred to the end of the user's quiet hours, never dropped.
            log.info(
                "delivery.quiet_hours", delivery_id=d.id, notification_id=d.notification_id, until=d.due_at
            )

    def _track(self, d: Delivery, category: Category) -> None:
        """Email open and click tracking: the template's email variant decides (``"tracking":
        true/false``), else the category (``tracking``; by default on where users may opt out,
        off for ``security`` and ``transactional``)."""
        wanted = d.content.pop("tracking", None)
        if not isinstance(wanted, bool):
            wanted = category.tracking if category.tracking is not None else category.opt_out
        html = d.content.get("html")
        if not wanted or self.tracking is None or not isinstance(html, str) or not html.strip():
            return
        keep = {str(d.content["unsubscribe_url"])} if d.content.get("unsubscribe_url") else set()
        done = self.tracking.rewrite(d.id, html, keep=keep)
        d.content["html"] = done.html
        d.content["_track"] = {"links": done.links}

    def _render(self, n: Notification, template: Template | None, channel: str, user: User) -> JSON:
        locale = user.locale or self.catalog.default_locale
        if template is not None:
            variant = template.variant(channel, locale)
            if variant is None:
                raise TemplateError(f"template {template.name!r} has no {channel} variant")
        else:
            variant = (n.content or {}).get(channel)
            if variant is None:
                raise TemplateError(f"no {channel} content")
        context = {
            "data": n.data,
            "user": user.template_view(),
            "notification": {"id": n.id, "category": n.category, "priority": n.priority.value},
        }
        # A template over its budget for one recipient fails the notification's other
        # recipients on that channel at once: a thousand of them must not cost a thousand
        # time budgets of the routing thread.
        key = (n.id, channel, locale)
        over = self._over_budget.get(key)
        if over is not None:
            raise RenderBudgetError(over.detail, limit=over.limit)
        try:
            return render_variant(variant, context)
        except RenderBudgetError as exc:
            if len(self._over_budget) > 1024:
                self._over_budget.clear()
            self._over_budget[key] = exc
            raise
