"""Accept: validate, authenticate (done by the entrypoint), idempotency, durable commit.

A notification is committed with status ``accepted`` and its recipients; routing happens after
the ``202``, in the router. Everything that can be rejected is rejected here, before commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog

from herald.domain.errors import (
    IdempotencyInProgress,
    IdempotencyKeyTaken,
    IdempotencyMismatch,
    ValidationError,
)
from herald.domain.models import (
    ALL_CHANNELS,
    JSON,
    EventRecord,
    Notification,
    NotificationStatus,
    Priority,
    Recipient,
    Template,
    User,
    new_id,
)
from herald.domain.validation import check_id, check_locale, check_timezone, normalize_email, normalize_phone
from herald.ports import AcceptServiceStore, Clock, IdempotencyClaim
from herald.services.catalog import Catalog
from herald.services.group_commit import NotificationWriter
from herald.services.lookups import Lookups
from herald.services.rendering import check_variant

log = structlog.get_logger("herald.accept")

MAX_RECIPIENTS = 1_000
_CHANNEL_NAMES = frozenset(c.value for c in ALL_CHANNELS)
_CONTENT_FIELDS = frozenset({"subject", "text", "html", "title", "body", "url", "data", "image"})


@dataclass(slots=True)
class SendRequest:
    to: Any
    template: str | None = None
    content: JSON | None = None
    data: JSON | None = None
    channels: list[str] | None = None
    category: str | None = None
    priority: str | None = None
    send_at: float | None = None
    expires_at: float | None = None
    dedup_key: str | None = None
    event_type: str | None = None
    fallback: bool = False  # channels are a chain (first reachable; next on permanent failure)


@dataclass(slots=True)
class PrepareMemo:
    """Lookups shared by the items of one batch: templates and users already seen."""

    templates: dict[str, Template] = field(default_factory=dict)
    known_users: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Accepted:
    status_code: int
    body: JSON
    events: list[EventRecord] = field(default_factory=list)  # committed with the notifications


def request_hash(payload: Any) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _replay(stored_hash: str, status_code: int | None, response: JSON | None, digest: str) -> Accepted:
    """The answer to a request whose key was committed already: the original response."""
    if stored_hash != digest:
        raise IdempotencyMismatch("this idempotency key was already used with a different request body")
    if status_code is None or response is None:  # a race on the key's row: the client retries
        raise IdempotencyInProgress("a request with this idempotency key is still being accepted")
    return Accepted(status_code, response)


def inline_user(raw: JSON, field: str) -> User:
    uid = raw.get("id")
    if not isinstance(uid, str):
        raise ValidationError(f"{field}.id is required for an inline recipient", field=f"{field}.id")
    user = User(id=check_id(uid, f"{field}.id"))
    if raw.get("email") is not None:
        user.email = normalize_email(str(raw["email"]), f"{field}.email")
    if raw.get("phone") is not None:
        user.phone = normalize_phone(str(raw["phone"]), f"{field}.phone")
    if raw.get("locale") is not None:
        user.locale = check_locale(str(raw["locale"]), f"{field}.locale")
    if raw.get("timezone") is not None:
        user.timezone = check_timezone(str(raw["timezone"]), f"{field}.timezone")
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise ValidationError(f"{field}.data must be an object", field=f"{field}.data")
    user.data = data
    return user


def _normalise_content(content: JSON, channels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Inline content is either per channel ({"email": {...}}) or one set of fields for all."""
    if set(content) <= _CHANNEL_NAMES:
        per: dict[str, dict[str, Any]] = {}
        for ch, fields in content.items():
            if not isinstance(fields, dict):
                raise ValidationError(f"content.{ch} must be an object", field=f"content.{ch}")
            per[ch] = fields
    else:
        unknown = set(content) - _CONTENT_FIELDS
        if unknown:
            raise ValidationError(
                f"content has unknown fields {sorted(unknown)}; "
                "use subject, text, html, title, body, url, data",
                field="content",
            )
        per = {ch: dict(content) for ch in channels}
        for ch, fields in per.items():
            if ch == "email" and "subject" not in fields and "title" in fields:
                fields["subject"] = fields["title"]
            if ch in ("email", "sms", "webhook", "chat") and "text" not in fields and "body" in fields:
                fields["text"] = fields["body"]
            if ch in ("push", "in_app") and "body" not in fields and "text" in fields:
                fields["body"] = fields["text"]
    for fields in per.values():
        check_variant(fields)
    return per


class RoutingExpress(Protocol):
    """A router in this process that routes what it is handed (RouterService.takes and
    RouterService.route_now)."""

    owner: str
    lease: float

    def takes(self, n: Notification) -> bool: ...

    def route_now(self, notifications: Sequence[Notification]) -> None: ...


class AcceptService:
    def __init__(
        self,
        store: AcceptServiceStore,
        clock: Clock,
        catalog: Catalog,
        on_accepted: Callable[[bool], None],
        *,
        lookups: Lookups | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.catalog = catalog
        self.on_accepted = on_accepted  # bootstrap: also wakes other processes' routers
        # Cached reads of templates and user ids (services/lookups.py); uncached without.
        self.lookups = lookups or Lookups(store, template_ttl=0, user_ttl=0)
        self.writer = NotificationWriter(store)
        self._in_flight: set[tuple[str, str]] = set()  # idempotency keys being accepted here
        # Set when this process routes (bootstrap, start_roles): critical and high notifications
        # are then committed already leased to that router and handed to it after the commit,
        # without its claim transaction or its wait for a wake-up.
        self.express: RoutingExpress | None = None

    async def idempotent(
        self,
        scope: str,
        key: str | None,
        payload: Any,
        build: Callable[[], Awaitable[tuple[list[Notification], Accepted]]],
    ) -> Accepted:
        """Run ``build`` once per (scope, key); commit its notifications with the key's record.

        The key is written with the notifications, in their transaction (see
        ``adapters/store/sql_idempotency.py``): a crash mid-accept leaves no claim behind, so a
        retry is accepted; a retry of a committed request gets the original response. In this
        process, a request whose key is being accepted right now is a 409 (as PRODUCT.md says);
        across processes the first commit wins and the other request gets its answer.
        """
        if key is None:
            notifications, result = await build()
            await self._commit(notifications, result, ())
            self._accepted(notifications)
            return result
        if not key or len(key) > 255:
            raise ValidationError("idempotency key must be 1-255 characters", field="idempotency_key")
        digest = request_hash(payload)
        now = self.clock.now()
        existing = await self.store.get_idempotent(scope, key, now=now)
        if existing is not None:
            return _replay(existing.request_hash, existing.status_code, existing.response, digest)
        mine = (scope, key)
        if mine in self._in_flight:
            raise IdempotencyInProgress("a request with this idempotency key is still being accepted")
        self._in_flight.add(mine)
        try:
            notifications, result = await build()
            claim = IdempotencyClaim(
                scope=scope,
                key=key,
                request_hash=digest,
                status_code=result.status_code,
                response=result.body,
                created_at=now,
                expires_at=now + self.catalog.idempotency_ttl,
            )
            try:
                await self._commit(notifications, result, [claim])
            except IdempotencyKeyTaken as taken:  # another process committed it first
                return _replay(taken.request_hash, taken.status_code, taken.response, digest)
        finally:
            self._in_flight.discard(mine)
        self._accepted(notifications)
        return result

    async def _commit(
        self,
        notifications: Sequence[Notification],
        result: Accepted,
        idem: Sequence[IdempotencyClaim],
    ) -> None:
        # Group commit: concurrent accepts share a transaction; this returns once ours is in. An
        # event that made no notification (condition false, no rule) commits its record alone.
        express = self.express
        if express is not None:
            until = self.clock.now() + express.lease
            for n in notifications:
                if express.takes(n):
                    n.status = NotificationStatus.ROUTING
                    n.routing_owner, n.routing_until = express.owner, until
        await self.writer.commit(notifications, idempotency=idem, events=result.events)

    def _accepted(self, notifications: Sequence[Notification]) -> None:
        for n in notifications:
            log.info(
                "notification.accepted",
                notification_id=n.id,
                recipients=n.recipients_total,
                category=n.category,
                priority=n.priority.value,
            )
        express = [n for n in notifications if n.routing_owner is not None]
        if express and self.express is not None:
            self.express.route_now(express)
        rest = [n for n in notifications if n.routing_owner is None]
        if rest:
            # Critical: the router routes it at once instead of gathering a few ms of company.
            self.on_accepted(any(n.priority == Priority.CRITICAL for n in rest))

    async def prepare(
        self,
        req: SendRequest,
        *,
        api_key_id: str | None,
        field_prefix: str = "",
        memo: PrepareMemo | None = None,
    ) -> Notification:
        """Validate one send and build its notification (not yet stored)."""
        f = field_prefix
        memo = memo or PrepareMemo()
        template: Template | None = None
        if req.template is not None:
            template = memo.templates.get(req.template) or await self.lookups.template(req.template)
            if template is not None:
                memo.templates[req.template] = template
            if template is None:
                raise ValidationError(f"unknown template {req.template!r}", field=f + "template")
        elif req.content is None:
            raise ValidationError("either template or content is required", field=f + "template")
        if req.template is not None and req.content is not None:
            raise ValidationError("give either template or content, not both", field=f + "content")

        channels = self._channels(req, template, f)
        if req.content is not None:
            per_channel = _normalise_content(req.content, channels)
            missing = [ch for ch in channels if ch not in per_channel]
            if missing:
                raise ValidationError(f"content has no variant for channels {missing}", field=f + "content")
            content: JSON | None = per_channel
        else:
            content = None

        category = self.catalog.category(
            req.category or (template.category if template else None), f + "category"
        )
        try:
            priority = Priority(req.priority) if req.priority else category.priority
        except ValueError:
            raise ValidationError(
                "priority must be one of critical, high, normal, low", field=f + "priority"
            ) from None
        now = self.clock.now()
        if req.expires_at is not None:
            if req.expires_at <= now:
                raise ValidationError("expires_at is in the past", field=f + "expires_at")
            if req.send_at is not None and req.expires_at <= req.send_at:
                raise ValidationError("expires_at must be after send_at", field=f + "expires_at")
        if req.data is not None and not isinstance(req.data, dict):
            raise ValidationError("data must be an object", field=f + "data")

        topic: str | None = None
        if isinstance(req.to, dict) and "topic" in req.to:
            topic = await self._topic(req.to, f + "to")
            recipients: list[Recipient] = []
        else:
            recipients = await self._recipients(req.to, f + "to", memo)
        if req.fallback and len(channels) < 2:
            raise ValidationError("a fallback chain needs at least two channels", field=f + "channels")
        return Notification(
            id=new_id("ntf"),
            status=NotificationStatus.ACCEPTED,
            recipients=recipients,
            template=template.name if template else None,
            template_version=template.version if template else None,
            content=content,
            data=req.data or {},
            channels=channels,
            category=category.name,
            priority=priority,
            send_at=req.send_at,
            expires_at=req.expires_at,
            dedup_key=req.dedup_key,
            api_key_id=api_key_id,
            event_type=req.event_type,
            recipients_total=len(recipients),
            created_at=now,
            topic=topic,
            fallback=req.fallback,
        )

    async def _topic(self, to: JSON, f: str) -> str:
        if set(to) != {"topic"} or not isinstance(to["topic"], str):
            raise ValidationError('a topic recipient is {"topic": "<key>"}', field=f)
        key = check_id(to["topic"], f + ".topic")
        if not await self.store.has_topic(key):
            raise ValidationError(f"unknown topic {key!r}", field=f + ".topic")
        return key

    def _channels(self, req: SendRequest, template: Template | None, f: str) -> list[str]:
        if req.channels is not None:
            if not req.channels:
                raise ValidationError("channels must not be empty", field=f + "channels")
            unknown = [c for c in req.channels if c not in _CHANNEL_NAMES]
            if unknown:
                raise ValidationError(f"unknown channels {unknown}", field=f + "channels")
            channels = list(dict.fromkeys(req.channels))
            if template is not None:
                missing = [c for c in channels if c not in template.channels]
                if missing:
                    raise ValidationError(
                        f"template {template.name!r} has no variant for channels {missing}",
                        field=f + "channels",
                    )
            return channels
        if template is not None:
            return list(template.channels)
        if req.content is not None and set(req.content) <= _CHANNEL_NAMES:
            return list(req.content)
        raise ValidationError("channels are required with flat inline content", field=f + "channels")

    async def _recipients(self, to: Any, f: str, memo: PrepareMemo) -> list[Recipient]:
        items: list[Any] = to if isinstance(to, list) else [to]
        if not items:
            raise ValidationError("to must name at least one recipient", field=f)
        if len(items) > MAX_RECIPIENTS:
            raise ValidationError(
                f"at most {MAX_RECIPIENTS} recipients per notification; use a topic", field=f
            )
        out: list[Recipient] = []
        stored_ids: list[str] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            sub = f"{f}[{i}]" if isinstance(to, list) else f
            if isinstance(item, str):
                uid = check_id(item, sub)
                if uid in seen:
                    continue
                seen.add(uid)
                stored_ids.append(uid)
                out.append(Recipient(user_id=uid))
            elif isinstance(item, dict):
                user = inline_user(item, sub)
                if user.id in seen:
                    continue
                seen.add(user.id)
                out.append(Recipient(user_id=user.id, inline=user))
            else:
                raise ValidationError(
                    "a recipient is a user id or an object with id and addresses", field=sub
                )
        unknown = [u for u in stored_ids if u not in memo.known_users]
        if unknown:
            found = await self.lookups.existing_users(unknown)
            memo.known_users.update(found)
            missing = [u for u in unknown if u not in found]
            if missing:
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise ValidationError(f"unknown user(s): {shown}", field=f)
        return out
