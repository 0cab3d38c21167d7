"""Row codecs of the SQL store: database rows to domain objects and back.

Shared by every module of the store (and the ``sql`` queue): kept apart so that none of them
imports another to decode a row.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Row

from herald.domain.models import (
    JSON,
    Attempt,
    Delivery,
    DeliveryResult,
    DeliveryStatus,
    Device,
    Notification,
    NotificationStatus,
    Outcome,
    Preferences,
    Priority,
    Recipient,
    Template,
    User,
)

S = DeliveryStatus
CLAIMABLE = frozenset({S.QUEUED.value, S.RETRYING.value})  # the statuses a sender claims

# The columns of a written delivery (:func:`_delivery_rows`) and of an attempt, in the order
# both dialects' batch inserts take them (sqlite_hot, pg_batch).
DELIVERY_COLUMNS = (
    "id", "notification_id", "user_id", "channel", "status", "reason", "priority", "category",
    "address", "content", "provider", "retry_count", "budget_used", "due_at", "expires_at",
    "created_at", "queued_at", "failed_at", "updated_at", "lease_owner", "lease_until", "sending_at",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "delivery_id", "n", "at", "provider", "outcome", "code", "detail", "latency_ms", "ambiguous",
)  # fmt: skip


def status_values(statuses: Sequence[DeliveryStatus] | frozenset[DeliveryStatus]) -> list[str]:
    """The values of ``statuses``, sorted (an ``IN`` list that is the same text every time)."""
    return sorted(s.value for s in statuses)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(value: str | None) -> Any:
    return orjson.loads(value) if value else None


@functools.lru_cache(maxsize=128)
def _row_type(fields: tuple[str, ...]) -> Any:
    try:
        return collections.namedtuple("_Row", fields)
    except ValueError:  # a name a tuple cannot have: keep the Row
        return None


def _plain(row: Row[Any]) -> Row[Any]:
    """The row as a named tuple: the decoders below read ~20 columns by name each, and a
    SQLAlchemy Row's attribute access costs ~10x a tuple's (a tenth of a routing pass)."""
    if not isinstance(row, Row):
        return row  # already plain (the SQLite claim path builds its own)
    kind = _row_type(row._fields)
    if kind is None:
        return row
    plain: Row[Any] = kind._make(row)
    return plain


def _user(row: Row[Any]) -> User:
    row = _plain(row)
    return User(
        id=row.id,
        email=row.email,
        phone=row.phone,
        locale=row.locale,
        timezone=row.timezone,
        data=_loads(row.data) or {},
        webhook_url=row.webhook_url,
        chat=_loads(row.chat) or {},
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _device(row: Row[Any]) -> Device:
    return Device(
        id=row.id,
        user_id=row.user_id,
        kind=row.kind,
        token=row.token,
        data=_loads(row.data) or {},
        active=bool(row.active),
        created_at=row.created_at,
    )


def _preferences_into(
    out: dict[str, Preferences], preference_rows: Iterable[Any], setting_rows: Iterable[Any]
) -> None:
    """Add users' preference rows (``category`` ``*``: the channel itself) and settings rows
    (quiet hours, digests) to ``out``, {user id: preferences}."""
    for row in preference_rows:
        p = out.setdefault(row.user_id, Preferences(user_id=row.user_id))
        if row.category == "*":
            p.channels[row.channel] = bool(row.enabled)
        else:
            p.categories.setdefault(row.category, {})[row.channel] = bool(row.enabled)
    for row in setting_rows:
        p = out.setdefault(row.user_id, Preferences(user_id=row.user_id))
        p.quiet_hours = _loads(row.quiet_hours)
        p.digests = _loads(row.digests) or {}


def _template(row: Row[Any]) -> Template:
    return Template(
        name=row.name,
        version=row.version,
        category=row.category,
        channels=_loads(row.channels),
        locales=_loads(row.locales) or {},
        default_locale=row.default_locale,
        created_at=row.created_at,
    )


def _notification(row: Row[Any]) -> Notification:
    row = _plain(row)
    body = _loads(row.content)
    recipients = []
    for r in body.get("recipients", []):
        inline = User(**r["inline"]) if r.get("inline") else None
        recipients.append(Recipient(user_id=r["user_id"], inline=inline))
    return Notification(
        id=row.id,
        status=NotificationStatus(row.status),
        recipients=recipients,
        template=row.template,
        template_version=row.template_version,
        content=body.get("content"),
        data=body.get("data") or {},
        channels=body.get("channels"),
        category=row.category,
        priority=Priority.from_rank(row.priority),
        send_at=row.send_at,
        expires_at=row.expires_at,
        dedup_key=row.dedup_key,
        api_key_id=row.api_key_id,
        topic=row.topic,
        event_type=body.get("event_type"),
        recipients_total=row.recipients_total,
        recipients_routed=row.recipients_routed,
        error=row.error,
        created_at=row.created_at,
        routed_at=row.routed_at,
        fallback=bool(body.get("fallback")),
        route_cursor=row.route_cursor,
    )


def _notification_body(n: Notification) -> str:
    recipients = []
    for r in n.recipients:
        item: JSON = {"user_id": r.user_id}
        if r.inline is not None:
            u = r.inline
            item["inline"] = {
                "id": u.id,
                "email": u.email,
                "phone": u.phone,
                "locale": u.locale,
                "timezone": u.timezone,
                "data": u.data,
                "webhook_url": u.webhook_url,
                "chat": u.chat,
            }
        recipients.append(item)
    return _dumps(
        {
            "recipients": recipients,
            "content": n.content,
            "data": n.data,
            "channels": n.channels,
            "event_type": n.event_type,
            "fallback": n.fallback,
        }
    )


def _delivery(row: Row[Any]) -> Delivery:
    row = _plain(row)
    return Delivery(
        id=row.id,
        notification_id=row.notification_id,
        user_id=row.user_id,
        channel=row.channel,
        status=S(row.status),
        priority=Priority.from_rank(row.priority),
        category=row.category,
        address=row.address,
        content=_loads(row.content) or {},
        reason=row.reason,
        provider=row.provider,
        attempts_made=row.retry_count,
        budget_used=row.budget_used,
        due_at=row.due_at,
        expires_at=row.expires_at,
        created_at=row.created_at,
        queued_at=row.queued_at,
        sent_at=row.sent_at,
        delivered_at=row.delivered_at,
        read_at=row.read_at,
        failed_at=row.failed_at,
        updated_at=row.updated_at,
        provider_message_id=row.provider_message_id,
    )


def _attempt(row: Row[Any]) -> Attempt:
    return Attempt(
        n=row.n,
        at=row.at,
        provider=row.provider,
        outcome=Outcome(row.outcome),
        code=row.code,
        detail=row.detail,
        latency_ms=row.latency_ms,
        ambiguous=bool(row.ambiguous),
    )


def _delivery_rows(deliveries: Sequence[Delivery], now: float) -> list[dict[str, Any]]:
    return [
        {
            "id": x.id,
            "notification_id": x.notification_id,
            "user_id": x.user_id,
            "channel": x.channel,
            "status": x.status.value,
            "reason": x.reason,
            "priority": x.priority.rank,
            "category": x.category,
            "address": x.address,
            "content": _dumps(x.content),
            "provider": x.provider,
            "retry_count": x.attempts_made,
            "budget_used": x.budget_used,
            "due_at": x.due_at,
            "expires_at": x.expires_at,
            "created_at": now,
            "queued_at": now if x.status == S.QUEUED else None,
            "failed_at": now if x.status == S.FAILED else None,
            "updated_at": now,
            "lease_owner": None,
            "lease_until": None,
            "sending_at": None,
        }
        for x in deliveries
    ]


class Changed(NamedTuple):
    """A delivery a result changed: its queue keys after the change, its rollup keys, and its
    user (an in-app item sent is numbered in the user's inbox feed)."""

    channel: str
    priority: int
    due_at: float
    created_at: float
    category: str
    template: str | None
    user_id: str


def result_values(r: DeliveryResult, now: float) -> dict[str, Any]:
    """The values a result writes (both dialects' result statements), named ``b_*``."""
    sent = r.new_status == S.SENT
    return {
        "b_id": r.delivery_id,
        "b_owner": r.lease_owner,
        "b_status": r.new_status.value,
        "b_reason": r.reason,
        "b_provider": r.attempt.provider,
        "b_n": r.attempt.n,
        "b_budget": 1 if r.counts_against_budget else 0,
        "b_now": now,
        "b_sent_at": r.attempt.at if sent else None,
        "b_message_id": r.provider_message_id if sent else None,
        "b_failed_at": now if r.new_status in (S.FAILED, S.DEAD) else None,
        "b_due_at": r.due_at,
    }


def attempt_rows(results: Sequence[DeliveryResult]) -> list[dict[str, Any]]:
    """The attempt rows of ``results`` (keys: :data:`ATTEMPT_COLUMNS`)."""
    return [
        {
            "delivery_id": r.delivery_id,
            "n": r.attempt.n,
            "at": r.attempt.at,
            "provider": r.attempt.provider,
            "outcome": r.attempt.outcome.value,
            # PostgreSQL enforces VARCHAR(64) (SQLite does not): a provider's long error name
            # must not make the whole batch fail, forever.
            "code": r.attempt.code[:64] if r.attempt.code else r.attempt.code,
            "detail": r.attempt.detail,
            "latency_ms": r.attempt.latency_ms,
            "ambiguous": r.attempt.ambiguous,
        }
        for r in results
    ]
