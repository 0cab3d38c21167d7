"""The ``webpush`` provider: Web Push (RFC 8030) with VAPID (RFC 8292) and ``aes128gcm``
message encryption (RFC 8291 over RFC 8188).

**The subscription.** A browser's ``PushSubscription`` is ``{"endpoint", "keys": {"p256dh",
"auth"}}``. herald reads it from ``message.metadata["subscription"]`` when present, otherwise
from ``message.address``, which then holds the subscription JSON-encoded, exactly what
``JSON.stringify(pushSubscription)`` gives in the browser. A ``webpush`` device is therefore
registered with that JSON as its token; a dead subscription is deactivated by that token.
A subscription that cannot be parsed is a dead address (``invalid_subscription``).

**The payload** is JSON: the rendered push content (``title``, ``body``, ``data``, ...; the
router's ``devices`` list is left out) plus ``"herald": {"delivery_id", "notification_id",
"category"}``. :func:`build_payload` makes it; it must stay within 3993 bytes, the most one
4096-byte record carries (RFC 8291 §4), else the send fails permanently.

**Encryption** uses ``http_ece`` (a fresh P-256 key pair and salt per message, record size
4096, padding delimiter 0x02); **VAPID** is done here with ``cryptography``: an ES256 JWT with
``aud`` = the endpoint's origin, ``exp`` = now + ``token_lifetime`` (at most 24 h), ``sub`` = the
configured ``mailto:``/``https:`` contact, sent as ``Authorization: vapid t=<jwt>, k=<public key>``.
Tokens are cached per origin and renewed at half their lifetime.

**Headers**: ``TTL`` (seconds to ``expires_at``, else ``default_ttl``), ``Urgency`` (from
``metadata["urgency"]`` or the priority: critical/high → high, normal → normal, low → low),
``Topic`` (from ``metadata["collapse_id"]`` or ``content["collapse_id"]``: used as is when it is
at most 32 base64url characters, else a base64url SHA-256 prefix), ``Content-Encoding:
aes128gcm``.

**The endpoint is user input**, so it goes through the SSRF guard like a webhook URL (https
only, public addresses, the vetted address pinned); ``allowed_hosts`` admits a local push
service for tests, over http too.

**Outcomes**: 201/202 (any 2xx) ok, the ``Location`` header as the message id; 404/410 → dead
address (the subscription is gone); 413 → permanent; 429 and 5xx → transient with
``Retry-After``; 401/403 → configuration error (the push service refused our VAPID
credentials); other statuses → permanent; connection failures → transient, ambiguous when the
request had been sent.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import http_ece  # type: ignore[import-untyped]  # http-ece ships no type information
import orjson
import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from yarl import URL

from herald.adapters.providers.http import transport_failure
from herald.adapters.providers.slots import PrioritySlots, reserved_share
from herald.adapters.providers.ssrf import BlockedAddressError, Resolve, SsrfGuard
from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, Priority, SendReceipt
from herald.domain.policies import parse_retry_after
from herald.domain.validation import mask

log = structlog.get_logger("herald.providers.webpush")

RECORD_SIZE = 4096
MAX_PLAINTEXT = 3993  # 4096 - 86 (header with a 65-byte keyid) - 16 (tag) - 1 (delimiter)
MAX_TTL = 28 * 24 * 3600
_URGENCY = {Priority.CRITICAL: "high", Priority.HIGH: "high", Priority.NORMAL: "normal", Priority.LOW: "low"}
_URGENCIES = frozenset({"very-low", "low", "normal", "high"})
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: str) -> bytes:
    value = value.strip().replace("+", "-").replace("/", "_").rstrip("=")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def load_vapid_key(value: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM (SEC 1 or PKCS #8) or a raw base64url 32-byte scalar."""
    value = value.strip()
    if value.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(value.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the PEM key is not a P-256 (prime256v1) EC key")
        return key
    raw = b64url_decode(value)
    if len(raw) != 32:
        raise ValueError("a raw VAPID private key is 32 bytes, base64url-encoded")
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The application server key as browsers take it: the uncompressed point, base64url."""
    return b64url(key.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint))


def vapid_token(key: ec.EllipticCurvePrivateKey, audience: str, subject: str, expires: int) -> str:
    header = b64url(orjson.dumps({"typ": "JWT", "alg": "ES256"}))
    claims = b64url(orjson.dumps({"aud": audience, "exp": expires, "sub": subject}))
    signing_input = f"{header}.{claims}".encode("ascii")
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    # JWS ES256 wants the raw 64-byte r || s, not the DER that cryptography returns.
    return f"{header}.{claims}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class WebPushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # secrets never echo

    vapid_private_key: SecretStr
    vapid_subject: str
    timeout: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    default_ttl: int = Field(default=86_400, ge=0, le=MAX_TTL)
    token_lifetime: int = Field(default=12 * 3600, ge=60, le=24 * 3600)
    allow_private: bool = False
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_networks: list[str] = Field(default_factory=list)
    pool_size: int = Field(default=100, ge=1)

    @field_validator("vapid_private_key")
    @classmethod
    def _loads(cls, value: SecretStr) -> SecretStr:
        try:
            load_vapid_key(value.get_secret_value())
        except (ValueError, TypeError):
            # Never echo the key itself into the configuration error.
            raise ValueError("is not a P-256 private key (PEM, or raw base64url)") from None
        return value

    @field_validator("vapid_subject")
    @classmethod
    def _contact(cls, value: str) -> str:
        if not value.startswith(("mailto:", "https://")):
            raise ValueError("must be a mailto: or https: URI (RFC 8292 §2.1)")
        return value


@dataclass(frozen=True, slots=True)
class Subscription:
    endpoint: str
    p256dh: bytes
    auth: bytes


def parse_subscription(message: OutboundMessage) -> Subscription:
    raw: Any = message.metadata.get("subscription")
    if raw is None:
        try:
            raw = orjson.loads(message.address)
        except orjson.JSONDecodeError:
            raise DeadAddressError("the address is not a JSON push subscription",
                                   code="invalid_subscription") from None
    try:
        endpoint = raw["endpoint"]
        p256dh = b64url_decode(raw["keys"]["p256dh"])
        auth = b64url_decode(raw["keys"]["auth"])
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError("endpoint")
        if len(p256dh) != 65 or p256dh[0] != 4:
            raise ValueError("p256dh is not an uncompressed P-256 point")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
        if len(auth) != 16:
            raise ValueError("auth is not 16 bytes")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DeadAddressError(f"malformed push subscription: {type(exc).__name__}",
                               code="invalid_subscription") from None
    return Subscription(endpoint, p256dh, auth)


def build_payload(message: OutboundMessage) -> bytes:
    body = {k: v for k, v in message.content.items() if k != "devices" and not k.startswith("_")}
    body["herald"] = {
        "delivery_id": message.delivery_id,
        "notification_id": message.notification_id,
        "category": message.category,
    }
    return orjson.dumps(body)


def encrypt(payload: bytes, subscription: Subscription) -> bytes:
    """RFC 8291 ``aes128gcm``: one record, a fresh sender key and salt for every message."""
    sender = ec.generate_private_key(ec.SECP256R1())
    result: bytes = http_ece.encrypt(
        payload,
        salt=os.urandom(16),
        private_key=sender,
        dh=subscription.p256dh,
        auth_secret=subscription.auth,
        version="aes128gcm",
        rs=RECORD_SIZE,
    )
    return result


def _endpoint_url(endpoint: str) -> URL:
    try:
        return URL(endpoint)
    except (ValueError, TypeError):
        raise BlockedAddressError("the endpoint is not a valid URL") from None


def topic_for(value: str) -> str:
    if _TOPIC.match(value):
        return value
    return b64url(hashlib.sha256(value.encode()).digest())[:32]


async def _on_headers_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    if ctx.trace_request_ctx is not None:
        ctx.trace_request_ctx.sent = True


class WebPushProvider:
    name = "webpush"

    def __init__(
        self, config: WebPushConfig, *, clock: Callable[[], float] = time.time, resolve: Resolve | None = None
    ) -> None:
        self.config = config
        self._clock = clock
        self._key = load_vapid_key(config.vapid_private_key.get_secret_value())
        self.public_key = public_key_b64(self._key)
        self._tokens: dict[str, tuple[str, int]] = {}
        self.guard = SsrfGuard(
            allow_private=config.allow_private,
            allowed_hosts=config.allowed_hosts,
            allowed_networks=config.allowed_networks,
            resolve=resolve,
        )
        self._session: aiohttp.ClientSession | None = None
        self._slots = PrioritySlots(self.config.pool_size, reserved_share(self.config.pool_size))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_on_headers_sent)
            self._session = aiohttp.ClientSession(
                connector=self.guard.connector(limit=self.config.pool_size),
                timeout=aiohttp.ClientTimeout(
                    total=self.config.timeout,
                    sock_connect=min(self.config.connect_timeout, self.config.timeout),
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                trace_configs=[trace],
            )
        return self._session

    def authorization(self, endpoint: URL) -> str:
        audience = str(endpoint.origin())
        now = int(self._clock())
        cached = self._tokens.get(audience)
        if cached is None or cached[1] - now < self.config.token_lifetime // 2:
            if len(self._tokens) >= 1024:  # a few push services in practice; stay bounded
                self._tokens.clear()
            expires = now + self.config.token_lifetime
            cached = (vapid_token(self._key, audience, self.config.vapid_subject, expires), expires)
            self._tokens[audience] = cached
        return f"vapid t={cached[0]}, k={self.public_key}"

    def headers_for(self, message: OutboundMessage) -> dict[str, str]:
        if message.expires_at is not None:
            ttl = min(MAX_TTL, max(0, int(message.expires_at - self._clock())))
        else:
            ttl = self.config.default_ttl
        urgency = message.metadata.get("urgency")
        headers = {
            "TTL": str(ttl),
            "Urgency": urgency if urgency in _URGENCIES else _URGENCY[message.priority],
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        collapse = message.metadata.get("collapse_id") or message.content.get("collapse_id")
        if collapse:
            headers["Topic"] = topic_for(str(collapse))
        return headers

    async def send(self, message: OutboundMessage) -> SendReceipt:
        # Connections by priority: critical and high never wait behind low for one (slots.py).
        async with self._slots.slot(message.priority.rank):
            return await self._send(message)

    async def _send(self, message: OutboundMessage) -> SendReceipt:
        subscription = parse_subscription(message)
        payload = build_payload(message)
        if len(payload) > MAX_PLAINTEXT:
            raise PermanentDeliveryError(
                f"push payload is {len(payload)} bytes; at most {MAX_PLAINTEXT} fit one record",
                code="payload_too_large",
            )
        try:
            endpoint = _endpoint_url(subscription.endpoint)
            if endpoint.scheme != "https" and not self.guard.host_allowed(endpoint):
                raise BlockedAddressError("push endpoints must be https")
            vetted = await self.guard.vet(endpoint)
        except BlockedAddressError as exc:
            log.warning("webpush.blocked", delivery_id=message.delivery_id,
                        endpoint=mask(subscription.endpoint), reason=exc.detail)
            raise
        headers = self.headers_for(message)
        headers["Authorization"] = self.authorization(vetted.url)
        body = encrypt(payload, subscription)
        progress = SimpleNamespace(sent=False)
        started = time.perf_counter()
        try:
            async with self._client().post(
                vetted.url, data=body, headers=headers, allow_redirects=False, trace_request_ctx=progress
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    await resp.content.read(1024)  # drained, the connection is reused
                    location = resp.headers.get("Location")
                    log.debug("webpush.accepted", delivery_id=message.delivery_id,
                              endpoint=mask(subscription.endpoint), status=status,
                              ms=round((time.perf_counter() - started) * 1000, 2))
                    return SendReceipt(code=str(status), provider_message_id=location)
                text = (await resp.content.read(1024)).decode("utf-8", "replace").strip()[:200]
                error = self._classify(status, resp.headers.get("Retry-After"), text)
                log.info("webpush.refused", delivery_id=message.delivery_id,
                         endpoint=mask(subscription.endpoint), status=status, outcome=error.outcome)
                raise error
        except DeliveryError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_failure(
                exc, peer="the push service", timeout=self.config.timeout, sent=progress.sent
            ) from None

    def _classify(self, status: int, retry_after: str | None, text: str) -> DeliveryError:
        detail = f"HTTP {status}" + (f": {text}" if text else "")
        code = str(status)
        if status in (404, 410):
            return DeadAddressError(detail, code=code)
        if status in (401, 403):
            return ProviderConfigError(detail, code=code)
        if status == 429 or status >= 500:
            return TransientDeliveryError(
                detail, code=code, retry_after=parse_retry_after(retry_after, now=self._clock())
            )
        return PermanentDeliveryError(detail, code=code)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
