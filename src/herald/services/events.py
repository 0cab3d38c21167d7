"""Events: a domain fact from a producer, turned into a notification by its routing rule.

The same path serves ``POST /v1/events`` and the broker consumer. Every event is recorded with
what became of it: ``accepted`` (a notification was committed with it, in the same transaction),
``skipped`` (a condition of the rule is false; the record says which and why) or ``unrouted``
(no rule, kept when ``events.unrouted = "store"``). An event type without a rule is otherwise
rejected with a 422; nothing is dropped silently.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import structlog

from herald.domain.errors import ValidationError
from herald.domain.models import JSON, EventRecord, Notification, new_id
from herald.domain.rules import Rule, evaluate
from herald.domain.validation import check_id
from herald.ports import Clock, EventStore
from herald.services.accept import Accepted, AcceptService, SendRequest

log = structlog.get_logger("herald.events")

_EVENT_FIELDS = frozenset({"type", "to", "data", "idempotency_key", "send_at", "expires_at", "dedup_key"})


def event_view(e: EventRecord) -> JSON:
    return {
        "id": e.id,
        "type": e.type,
        "status": e.status,
        "reason": e.reason,
        "detail": e.detail,
        "notification_id": e.notification_id,
        "source": e.source,
    }


class EventService:
    def __init__(
        self,
        store: EventStore,
        clock: Clock,
        accept: AcceptService,
        *,
        unrouted: str = "reject",
        rule_cache_seconds: float = 2.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.accept = accept
        self.unrouted = unrouted
        self._cache_ttl = rule_cache_seconds
        self._rules: dict[str, tuple[float, Rule | None]] = {}

    async def rule(self, event_type: str) -> Rule | None:
        """The rule for ``event_type``, cached for a moment (other processes' changes show
        within ``events.rule_cache_seconds``; this process's own at once)."""
        cached = self._rules.get(event_type)
        mono = time.monotonic()
        if cached is not None and cached[0] > mono:
            return cached[1]
        rule = await self.store.get_rule(event_type)
        if len(self._rules) > 1024:
            self._rules.clear()
        self._rules[event_type] = (mono + self._cache_ttl, rule)
        return rule

    def forget(self, event_type: str) -> None:
        self._rules.pop(event_type, None)

    @staticmethod
    def validate(payload: Any) -> tuple[str, JSON]:
        if not isinstance(payload, dict):
            raise ValidationError("an event is a JSON object with type, to and data", field=None)
        unknown = set(payload) - _EVENT_FIELDS
        if unknown:
            raise ValidationError(f"unknown event fields {sorted(unknown)}", field=sorted(unknown)[0])
        event_type = payload.get("type")
        if not isinstance(event_type, str):
            raise ValidationError("type is required (the event type)", field="type")
        check_id(event_type, "type")
        if "to" not in payload:
            raise ValidationError("to is required", field="to")
        data = payload.get("data", {})
        if not isinstance(data, dict):
            raise ValidationError("data must be an object", field="data")
        return event_type, data

    async def ingest(
        self,
        payload: Any,
        *,
        source: str = "http",
        scope: str = "amqp",
        idempotency_key: str | None = None,
        api_key_id: str | None = None,
    ) -> Accepted:
        """Validate, apply the rule and commit: the notification and the event record together."""
        event_type, data = self.validate(payload)
        key = idempotency_key if idempotency_key is not None else payload.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise ValidationError("idempotency_key must be a string", field="idempotency_key")
        body = {k: v for k, v in payload.items() if k != "idempotency_key"}

        async def build() -> tuple[list[Notification], Accepted]:
            now = self.clock.now()
            record = EventRecord(
                id=new_id("evt"), type=event_type, status="accepted", body=body, source=source, created_at=now
            )
            rule = await self.rule(event_type)
            if rule is None:
                if self.unrouted != "store":
                    raise ValidationError(
                        f"no routing rule for event type {event_type!r}; "
                        f"create one with PUT /v1/rules/{event_type}",
                        field="type",
                    )
                record.status, record.reason = "unrouted", "no_rule"
                record.detail = f"no routing rule for event type {event_type!r}"
                log.info("event.unrouted", event_id=record.id, type=event_type)
                return [], Accepted(202, event_view(record), events=[record])
            why = evaluate(rule.conditions, data)
            if why is not None:
                record.status, record.reason, record.detail = "skipped", "condition_false", why
                log.info("event.skipped", event_id=record.id, type=event_type, detail=why)
                return [], Accepted(202, event_view(record), events=[record])
            req = SendRequest(
                to=payload["to"],
                template=rule.template,
                data=data,
                channels=list(rule.channels),
                category=rule.category,
                priority=rule.priority.value if rule.priority else None,
                send_at=_epoch(payload.get("send_at"), "send_at"),
                expires_at=_epoch(payload.get("expires_at"), "expires_at"),
                dedup_key=_opt_str(payload.get("dedup_key"), "dedup_key"),
                event_type=event_type,
                fallback=rule.fallback,
            )
            n = await self.accept.prepare(req, api_key_id=api_key_id)
            record.notification_id = n.id
            log.info("event.accepted", event_id=record.id, type=event_type, notification_id=n.id)
            view = event_view(record) | {"notification": {"id": n.id, "status": n.status.value}}
            return [n], Accepted(202, view, events=[record])

        return await self.accept.idempotent(f"evt:{scope}"[:40], key, body, build)


def _epoch(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise ValidationError(f"{name} must be an ISO 8601 time or epoch seconds", field=name)


def _opt_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise ValidationError(f"{name} must be a string of 1-255 characters", field=name)
    return value
