"""The ``sendgrid`` provider: email through SendGrid's v3 Mail Send API.

``POST {base_url}/v3/mail/send`` with ``Authorization: Bearer <api key>`` and a JSON body with
one personalization per message. The delivery id travels as ``custom_args.herald_delivery_id``
*inside the personalization* (the spec types the message-level ``custom_args`` as a string, and
per-recipient ids belong there anyway); SendGrid copies custom args into every event it posts to
the Event Webhook, which is how :func:`parse_sendgrid_events` finds the delivery.

Outcome classification (SendGrid has no error codes, so ``code`` is the HTTP status):

* 202 (200 in sandbox mode) → accepted; the receipt carries the ``X-Message-Id`` header;
* 429 → transient, ``retry_after`` from ``X-RateLimit-Reset`` (epoch seconds), else
  ``Retry-After``;
* 5xx → transient, on the retry schedule (or its ``Retry-After``). SendGrid sends its
  ``X-RateLimit-*`` headers on every answer: the reset time is when the *rate limit window*
  ends, so it is obeyed only on a 429 or when ``X-RateLimit-Remaining`` is 0. Obeyed on a 503
  it deferred the retry up to a minute and paused the provider in a failover chain;
* 401, 403 (bad key, missing scope, unverified sender) and 404/405 (wrong ``base_url``) →
  configuration error: never the user's fault;
* 400, 413 and other 4xx → permanent.

Event Webhook helpers (pure, no web framework): :func:`verify_sendgrid_signature` (ECDSA P-256
with SHA-256 over ``timestamp + payload``) and :func:`parse_sendgrid_events`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import re
import time
from collections.abc import Hashable, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr, field_validator

from herald.adapters.providers.http import HttpAnswer, Now, ProviderHttp, decode_json, retry_after_seconds
from herald.domain.errors import (
    DeliveryError,
    MalformedRequest,
    PermanentDeliveryError,
    PermissionDenied,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import CallbackEvent, CallbackRequest, OutboundMessage, SendReceipt
from herald.domain.validation import mask

log = structlog.get_logger("herald.providers.sendgrid")

SEND_PATH = "/v3/mail/send"
MAX_PERSONALIZATIONS = 1000  # per request (and recipients per request), SendGrid's limit
DELIVERY_ARG = "herald_delivery_id"
NOTIFICATION_ARG = "herald_notification_id"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


class SendGridConfig(BaseModel):
    """``[providers.sendgrid]``."""

    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr
    from_email: EmailStr
    from_name: str | None = None
    base_url: str = "https://api.sendgrid.com"  # EU subusers: https://api.eu.sendgrid.com
    timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=100, ge=1, le=10_000)
    # The Signed Event Webhook's verification key (base64 DER, as the console shows it, or PEM).
    event_webhook_public_key: str | None = None
    # Replay window for signed events: a batch signed longer ago (or as far ahead) is refused.
    # SendGrid posts events within seconds; a captured batch replayed later is not news.
    event_webhook_max_age: float = Field(default=300.0, gt=0, le=7 * 86_400)
    # Sandbox mode: SendGrid validates the request and answers 200 without sending.
    sandbox: bool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _non_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("api_key is empty")
        return value

    @field_validator("event_webhook_public_key")
    @classmethod
    def _loadable_key(cls, value: str | None) -> str | None:
        if value is not None:
            _load_public_key(value)  # raises ValueError with a clear message
        return value


# A delivery's own tracking URLs (services/link_tracking.py): the open pixel and click links.
_TRACKING_URL = re.compile(r"""https?://[^\s"'<>]*?/t/(?:o/[A-Za-z0-9_.\-]+?\.gif|c/[A-Za-z0-9_.\-]+)""")


def _tag(i: int) -> str:
    return f"-herald-url-{i}-"


def _shared_parts(message: OutboundMessage) -> tuple[tuple[str, str | None, str | None], list[str]] | None:
    """(subject, text, html) with the message's tracking URLs replaced by substitution tags,
    and those URLs in order; None when the content is not plain strings."""
    content = message.content
    subject, text, html = content.get("subject"), content.get("text"), content.get("html")
    if not isinstance(subject, str) or not all(isinstance(x, str | None) for x in (text, html)):
        return None
    urls: list[str] = []

    def tagged(value: str | None) -> str | None:
        if value is None or "/t/" not in value:
            return value

        def swap(m: re.Match[str]) -> str:
            urls.append(m.group(0))
            return _tag(len(urls) - 1)

        return _TRACKING_URL.sub(swap, value)

    return (tagged(subject) or "", tagged(text), tagged(html)), urls


def classify_sendgrid_error(status: int, message: str, *, retry_after: float | None = None) -> DeliveryError:
    """The :class:`DeliveryError` for a non-2xx answer."""
    detail = f"sendgrid {status}: {message}"[:500]
    code = str(status)
    if status == 429 or status >= 500:
        return TransientDeliveryError(detail, code=code, retry_after=retry_after)
    if status in (401, 403, 404, 405):
        return ProviderConfigError(detail, code=code)
    if 400 <= status < 500:
        return PermanentDeliveryError(detail, code=code)
    return TransientDeliveryError(detail, code=code)


def _error_message(body: bytes) -> str:
    data = decode_json(body)
    if isinstance(data, dict) and isinstance(data.get("errors"), list):
        parts = []
        for item in data["errors"]:
            if isinstance(item, dict) and item.get("message"):
                field = item.get("field")
                parts.append(
                    f"{field}: {item['message']}" if field and field != "null" else str(item["message"])
                )
        if parts:
            return "; ".join(parts)
    return body[:200].decode("utf-8", "replace") or "(empty body)"


class SendGridProvider:
    name = "sendgrid"

    def __init__(self, config: SendGridConfig, *, now: Now = time.time) -> None:
        self.config = config
        self._now = now
        self._http = ProviderHttp(
            provider=self.name,
            base_url=config.base_url,
            timeout=config.timeout,
            headers={
                "Authorization": "Bearer " + config.api_key.get_secret_value(),
                "Accept": "application/json",
                "User-Agent": "herald",
            },
            max_connections=config.max_connections,
        )
        self._url = self._http.url(SEND_PATH)
        sender: dict[str, str] = {"email": str(config.from_email)}
        if config.from_name:
            sender["name"] = config.from_name
        self._from = sender

    def build_body(self, message: OutboundMessage) -> dict[str, Any]:
        content = message.content
        subject = str(content.get("subject") or "").strip()
        if not subject:
            raise PermanentDeliveryError("email content has no subject", code="empty_subject")
        parts = []
        text = content.get("text")
        html = content.get("html")
        # text/plain must come first (SendGrid rejects other orders).
        if text is not None and str(text):
            parts.append({"type": "text/plain", "value": str(text)})
        if html is not None and str(html):
            parts.append({"type": "text/html", "value": str(html)})
        if not parts:
            raise PermanentDeliveryError("email content has neither text nor html", code="empty_body")
        personalization: dict[str, Any] = {
            "to": [{"email": message.address}],
            "custom_args": {DELIVERY_ARG: message.delivery_id, NOTIFICATION_ARG: message.notification_id},
        }
        body: dict[str, Any] = {
            "personalizations": [personalization],
            "from": self._from,
            "subject": subject,
            "content": parts,
        }
        unsubscribe = message.unsubscribe_url or content.get("unsubscribe_url")
        if unsubscribe:
            # RFC 8058 one-click unsubscribe, required by the large mailbox providers for bulk mail.
            body["headers"] = {
                "List-Unsubscribe": f"<{unsubscribe}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
        if message.category:
            body["categories"] = [message.category[:255]]
        if self.config.sandbox:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body

    # Batches (ports.BatchProvider) ---------------------------------------------------------------
    batch_limit = MAX_PERSONALIZATIONS

    def batch_key(self, message: OutboundMessage) -> Hashable | None:
        """Messages with equal keys share one request: the same subject, text, html and
        category once each delivery's own tracking URLs (open pixel, click links) are taken
        out. The address, the ids (``custom_args``), the unsubscribe link (headers) and those
        URLs (``substitutions``) are per personalization."""
        parts = _shared_parts(message)
        if parts is None:
            return None
        return (*parts[0], message.category)

    def build_batch_body(self, messages: Sequence[OutboundMessage]) -> dict[str, Any]:
        """One request for messages of equal :meth:`batch_key`: one personalization each."""
        body = self.build_body(messages[0])
        body.pop("headers", None)
        shared = _shared_parts(messages[0])
        if shared is not None and shared[1]:
            # Each delivery's tracking URLs become substitution tags in the shared content.
            (subject, text, html), _ = shared
            body["subject"] = subject
            body["content"] = [
                {"type": kind, "value": value}
                for kind, value in (("text/plain", text), ("text/html", html))
                if value
            ]
        personalizations = []
        for m in messages:
            p: dict[str, Any] = {
                "to": [{"email": m.address}],
                "custom_args": {DELIVERY_ARG: m.delivery_id, NOTIFICATION_ARG: m.notification_id},
            }
            own = _shared_parts(m)
            if own is not None and own[1]:
                p["substitutions"] = {_tag(i): url for i, url in enumerate(own[1])}
            unsubscribe = m.unsubscribe_url or m.content.get("unsubscribe_url")
            if unsubscribe:
                p["headers"] = {
                    "List-Unsubscribe": f"<{unsubscribe}>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                }
            personalizations.append(p)
        body["personalizations"] = personalizations
        return body

    async def send_batch(self, messages: Sequence[OutboundMessage]) -> list[SendReceipt | Exception]:
        """One request for up to 1,000 recipients. Accepted: every message has the receipt
        (one ``X-Message-Id``; SendGrid's events carry each personalization's custom args, so
        callbacks still find each delivery). Refused as a whole for a reason that may be one
        recipient's (400, 413): sent again one by one, so that only that recipient's delivery
        fails. Refused otherwise (rate limit, outage, credentials): every message gets it."""
        if len(messages) == 1:
            try:
                return [await self.send(messages[0])]
            except DeliveryError as exc:
                return [exc]
        if len(messages) > self.batch_limit:
            raise ValueError(f"at most {self.batch_limit} messages per request")
        try:
            payload = orjson.dumps(self.build_batch_body(messages))
        except DeliveryError as exc:  # no subject / no body: the same for every one of them
            return [exc] * len(messages)
        first = messages[0]
        try:
            answer = await self._http.post(
                self._url, body=payload, content_type="application/json", rank=first.priority.rank
            )
        except DeliveryError as exc:
            log.warning(
                "providers.sendgrid.transport_error",
                notification_id=first.notification_id,
                recipients=len(messages),
                code=exc.code,
                ambiguous=exc.ambiguous,
                outcome=exc.outcome,
            )
            return [exc] * len(messages)
        if 200 <= answer.status < 300:
            receipt = self._receipt(answer)
            return [receipt] * len(messages)
        retry_after = retry_after_seconds(answer.headers, now=self._now(), rate_limit_reset=True)
        error = classify_sendgrid_error(answer.status, _error_message(answer.body), retry_after=retry_after)
        log.warning(
            "providers.sendgrid.batch_rejected",
            notification_id=first.notification_id,
            recipients=len(messages),
            status=answer.status,
            outcome=error.outcome,
        )
        if isinstance(error, PermanentDeliveryError):
            outcomes = await asyncio.gather(*(self.send(m) for m in messages), return_exceptions=True)
            return [o if isinstance(o, SendReceipt | Exception) else RuntimeError(str(o)) for o in outcomes]
        return [error] * len(messages)

    async def send(self, message: OutboundMessage) -> SendReceipt:
        payload = orjson.dumps(self.build_body(message))
        started = time.perf_counter()
        try:
            answer = await self._http.post(
                self._url, body=payload, content_type="application/json", rank=message.priority.rank
            )
        except DeliveryError as exc:
            log.warning(
                "providers.sendgrid.transport_error",
                delivery_id=message.delivery_id,
                to=mask(message.address),
                code=exc.code,
                ambiguous=exc.ambiguous,
                outcome=exc.outcome,
            )
            raise
        if 200 <= answer.status < 300:
            return self._receipt(answer)
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        limited = answer.status == 429 or answer.headers.get("X-RateLimit-Remaining", "").strip() == "0"
        retry_after = retry_after_seconds(answer.headers, now=self._now(), rate_limit_reset=limited)
        error = classify_sendgrid_error(answer.status, _error_message(answer.body), retry_after=retry_after)
        log.warning(
            "providers.sendgrid.rejected",
            delivery_id=message.delivery_id,
            to=mask(message.address),
            status=answer.status,
            outcome=error.outcome,
            retry_after=error.retry_after,
            latency_ms=latency_ms,
        )
        raise error

    def _receipt(self, answer: HttpAnswer) -> SendReceipt:
        return SendReceipt(code=str(answer.status), provider_message_id=answer.headers.get("X-Message-Id"))

    def verify_events(self, payload: bytes, signature: str, timestamp: str) -> bool:
        """Check a signed Event Webhook request with the configured public key."""
        key = self.config.event_webhook_public_key
        if key is None:
            raise ProviderConfigError("sendgrid: event_webhook_public_key is not configured", code="no_key")
        return verify_sendgrid_signature(
            key, payload, signature, timestamp, max_age=self.config.event_webhook_max_age, now=self._now()
        )

    def parse_callback(self, request: CallbackRequest, *, public_base: str) -> list[CallbackEvent]:
        """A signed Event Webhook batch (``X-Twilio-Email-Event-Webhook-Signature``)."""
        del public_base  # SendGrid signs the body and timestamp, not the URL
        signature = request.headers.get("x-twilio-email-event-webhook-signature", "")
        timestamp = request.headers.get("x-twilio-email-event-webhook-timestamp", "")
        if not signature or not timestamp or not self.verify_events(request.body, signature, timestamp):
            raise PermissionDenied("the event webhook signature is missing, wrong or too old")
        try:
            return list(parse_sendgrid_events(request.body))
        except ValueError as exc:
            raise MalformedRequest(f"not a SendGrid event batch: {exc}") from None

    async def close(self) -> None:
        await self._http.close()


# Event Webhook -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_public_key(key: str) -> ec.EllipticCurvePublicKey:
    text = key.strip()
    try:
        if "BEGIN PUBLIC KEY" in text:
            loaded = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            loaded = serialization.load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM or base64 DER public key: {exc}") from None
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(loaded.curve, ec.SECP256R1):
        raise ValueError("the event webhook key must be an ECDSA P-256 public key")
    return loaded


def verify_sendgrid_signature(
    public_key_pem_or_b64: str,
    payload: bytes,
    signature_b64: str,
    timestamp: str,
    *,
    max_age: float | None = None,
    now: float | None = None,
) -> bool:
    """True when ``signature_b64`` (``X-Twilio-Email-Event-Webhook-Signature``) is SendGrid's
    ECDSA P-256 / SHA-256 signature of ``timestamp`` (``...-Timestamp`` header) + ``payload``
    (the raw request body, byte for byte). With ``max_age`` a timestamp older than that many
    seconds (or as far in the future) is refused as a replay.
    """
    if not signature_b64 or not timestamp:
        return False
    try:
        key = _load_public_key(public_key_pem_or_b64)
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (ValueError, binascii.Error):
        return False
    if max_age is not None:
        try:
            age = (time.time() if now is None else now) - float(timestamp)
        except ValueError:
            return False
        if abs(age) > max_age:
            return False
    try:
        key.verify(signature, timestamp.encode("utf-8") + payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _bounce_status(event: dict[str, Any]) -> str:
    # "blocked" is a soft bounce (reputation, content, a full mailbox): the address lives.
    return "failed" if str(event.get("type") or "").lower() == "blocked" else "bounced"


def _dropped_status(event: dict[str, Any]) -> str:
    reason = str(event.get("reason") or "").lower()
    if "unsubscribe" in reason or "spam reporting" in reason:
        return "unsubscribed"
    if "spam content" in reason or "exceeded" in reason:
        return "failed"  # the message, not the address, was the problem
    return "bounced"  # Bounced Address, Invalid, ...


def _status_for(event: dict[str, Any]) -> str | None:
    kind = str(event.get("event") or "").lower()
    if kind == "delivered":
        return "delivered"
    if kind == "bounce":
        return _bounce_status(event)
    if kind == "dropped":
        return _dropped_status(event)
    if kind in ("spamreport", "unsubscribe", "group_unsubscribe"):
        return "unsubscribed"
    if kind == "open":
        return "opened"
    if kind == "click":
        return "clicked"
    # processed, deferred (SendGrid keeps retrying), group_resubscribe: nothing to record.
    return None


def parse_sendgrid_events(payload: bytes) -> list[CallbackEvent]:
    """The actionable events in an Event Webhook POST body (a JSON array).

    ``delivered`` → delivered; ``bounce`` → bounced (``type: blocked`` → failed);
    ``dropped`` → bounced, or unsubscribed / failed by its reason; ``spamreport``,
    ``unsubscribe``, ``group_unsubscribe`` → unsubscribed; ``open`` → opened; ``click`` →
    clicked. ``processed`` and ``deferred`` are skipped. ``provider_message_id`` is the
    ``X-Message-Id`` part of ``sg_message_id``, so it matches the send receipt.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MalformedRequest("sendgrid events: body is not JSON") from None
    if not isinstance(data, list):
        raise MalformedRequest("sendgrid events: body is not a JSON array")
    events: list[CallbackEvent] = []
    for item in data:
        if not isinstance(item, dict):
            continue
        status = _status_for(item)
        if status is None:
            continue
        sg_message_id = item.get("sg_message_id")
        message_id = str(sg_message_id).split(".", 1)[0] if sg_message_id else None
        timestamp = item.get("timestamp")
        code = item.get("status")
        reason = item.get("reason") or item.get("response")
        kind = str(item.get("event"))
        delivery_id = item.get(DELIVERY_ARG)
        email = item.get("email")
        event_id = item.get("sg_event_id")
        events.append(
            CallbackEvent(
                provider="sendgrid",
                status=status,
                delivery_id=str(delivery_id) if delivery_id else None,
                provider_message_id=message_id,
                address=str(email) if email else None,
                event_id=str(event_id) if event_id else None,
                code=str(code) if code else None,
                detail=(f"{kind}: {reason}" if reason else kind)[:500],
                at=float(timestamp) if isinstance(timestamp, int | float) else None,
            )
        )
    return events
