"""Domain objects as the API's JSON shapes (PRODUCT.md section 3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from herald.domain.models import Attempt, Delivery, Device, Notification, NotificationStatus, Template, User
from herald.domain.states import FINAL
from herald.services.notifications import NotificationPage

MAX_DELIVERIES_PAGE = 1_000
_PRIVATE_CONTENT = frozenset({"_meta", "_track", "unsubscribe_url"})  # herald's own keys


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attempt_view(a: Attempt) -> dict[str, Any]:
    return {
        "n": a.n,
        "at": iso(a.at),
        "provider": a.provider,
        "outcome": a.outcome.value,
        "code": a.code,
        "detail": a.detail,
        "latency_ms": a.latency_ms,
        "ambiguous": a.ambiguous,
    }


def last_error(d: Delivery) -> dict[str, Any] | None:
    """The last attempt that did not succeed: why a dead or failed delivery is where it is."""
    for a in reversed(d.attempts):
        if a.outcome.value != "ok":
            return {
                "n": a.n,
                "at": iso(a.at),
                "provider": a.provider,
                "outcome": a.outcome.value,
                "code": a.code,
                "detail": a.detail,
            }
    return None


def dead_letter_view(d: Delivery) -> dict[str, Any]:
    """A dead letter: the delivery, every attempt, and the last error (provider, code, detail)."""
    return delivery_view(d) | {"last_error": last_error(d)}


def delivery_view(d: Delivery, *, with_content: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "notification_id": d.notification_id,
        "user_id": d.user_id,
        "channel": d.channel,
        "status": d.status.value,
        "reason": d.reason,
        "priority": d.priority.value,
        "category": d.category,
        "provider": d.provider,
        "attempts": [attempt_view(a) for a in d.attempts],
        "attempt_count": d.attempts_made,
        "created_at": iso(d.created_at),
        "sent_at": iso(d.sent_at),
        "delivered_at": iso(d.delivered_at),
        "read_at": iso(d.read_at),
        "failed_at": iso(d.failed_at),
        "next_attempt_at": iso(d.due_at) if d.status.value in ("retrying", "scheduled", "queued") else None,
        "provider_message_id": d.provider_message_id,
    }
    if d.reason == "render_error":  # why the template could not be rendered (names the limit)
        out["error"] = d.content.get("error")
    if with_content:
        out["content"] = {k: v for k, v in d.content.items() if k not in _PRIVATE_CONTENT}
    return out


# The statuses a notification shows: its own, with ``routed`` told apart by its deliveries.
ShownStatus = Literal["accepted", "routing", "in_progress", "completed", "cancelled", "failed"]


def notification_status(
    n: Notification, counts: dict[str, int] | None, *, in_progress: bool | None = None
) -> str:
    """``counts``: the notification's deliveries per status; or ``in_progress``: whether any
    of them is not final (the list asks the store that instead of counting)."""
    if n.status != NotificationStatus.ROUTED:
        return n.status.value
    if in_progress is None:
        if counts is None:
            raise ValueError("a routed notification's status needs its deliveries")
        final = {s.value for s in FINAL}
        in_progress = not all(status in final for status, k in counts.items() if k)
    return "in_progress" if in_progress else "completed"


def _counts(deliveries: list[Delivery]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in deliveries:
        counts[d.status.value] = counts.get(d.status.value, 0) + 1
    return counts


def notification_view(
    n: Notification,
    deliveries: list[Delivery] | None = None,
    *,
    counts: dict[str, int] | None = None,
    next_cursor: str | None = None,
    in_progress: bool | None = None,
) -> dict[str, Any]:
    """``deliveries``: all of them, or one page when ``counts`` (of all) is given;
    ``next_cursor``: where the next page starts, if there is one; ``in_progress``: instead
    of deliveries, whether any is not final (see :func:`notification_status`)."""
    if deliveries is not None and counts is None:
        counts = _counts(deliveries)
    out: dict[str, Any] = {
        "id": n.id,
        "status": notification_status(n, counts, in_progress=in_progress),
        "template": n.template,
        "template_version": n.template_version,
        "category": n.category,
        "priority": n.priority.value,
        "channels": n.channels,
        "created_at": iso(n.created_at),
        "send_at": iso(n.send_at),
        "expires_at": iso(n.expires_at),
        "recipients_total": n.recipients_total,
        "recipients_routed": n.recipients_routed,
        "topic": n.topic,
        "event_type": n.event_type,
        "fallback": n.fallback,
        "error": n.error,
    }
    if deliveries is not None:
        out["summary"] = counts
        out["deliveries"] = [delivery_view(d) for d in deliveries]
        out["deliveries_next"] = next_cursor
    return out


def accepted_view(n: Notification) -> dict[str, Any]:
    return {
        "id": n.id,
        "status": "accepted",
        "recipients": n.recipients_total,
        "channels": n.channels,
        "category": n.category,
        "priority": n.priority.value,
        "send_at": iso(n.send_at),
    }


def user_view(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "email": u.email,
        "phone": u.phone,
        "locale": u.locale,
        "timezone": u.timezone,
        "data": u.data,
        "webhook_url": u.webhook_url,
        "chat": u.chat,
        "created_at": iso(u.created_at),
        "updated_at": iso(u.updated_at),
    }


def device_view(d: Device) -> dict[str, Any]:
    token = d.token
    shown = token[:6] + "…" + token[-4:] if len(token) > 12 else "…"
    return {"id": d.id, "kind": d.kind, "token": shown, "active": d.active, "created_at": iso(d.created_at)}


def template_view(t: Template) -> dict[str, Any]:
    return {
        "name": t.name,
        "version": t.version,
        "category": t.category,
        "channels": t.channels,
        "locales": t.locales,
        "default_locale": t.default_locale,
        "created_at": iso(t.created_at),
    }


def inbox_item(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "notification_id": d.notification_id,
        "category": d.category,
        "title": d.content.get("title"),
        "body": d.content.get("body"),
        "url": d.content.get("url"),
        "read": d.read_at is not None or d.status.value == "read",
        "created_at": iso(d.created_at),
        "read_at": iso(d.read_at),
    }


def notification_page(page: NotificationPage | None) -> dict[str, Any] | None:
    """The view of a notification with a page of its deliveries (``deliveries_next`` is the
    ``after`` of the next page; NotificationService.page): None when it does not exist."""
    if page is None:
        return None
    return notification_view(
        page.notification, page.deliveries, counts=page.counts, next_cursor=page.next_cursor
    )
