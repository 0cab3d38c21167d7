"""The ``webhook`` provider: a signed JSON POST to the user's own endpoint.

The body is ``{"id": delivery_id, "notification_id", "user_id", "category", "content"}``
(``id`` is stable across retries, so receivers deduplicate on it). Headers:

* ``Herald-Delivery-Id: <delivery id>``
* ``Herald-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``; a
  receiver recomputes the HMAC over the raw body and refuses stale timestamps
  (:func:`verify_signature` does both).

The URL is user input, so every hop goes through the SSRF guard (:mod:`.ssrf`): only public
addresses, connected by the vetted IP (no second DNS lookup). Redirects are not followed by the
HTTP client; a ``307``/``308`` is followed by hand, the ``Location`` vetted again, at most
``max_redirects`` times. Any other redirect fails permanently (it would turn the POST into a
GET), after the target was vetted, so a redirect to an internal address is always reported as
``blocked_address``.

Outcomes: 2xx ok; 410 Gone → dead address (the endpoint is retired); 408, 429 and 5xx →
transient (``Retry-After`` honoured); other 3xx/4xx → permanent; connection failures and
timeouts → transient, ``ambiguous`` when the request had already been sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from types import SimpleNamespace

import aiohttp
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from yarl import URL

from herald.adapters.providers.http import transport_failure
from herald.adapters.providers.slots import PrioritySlots, reserved_share
from herald.adapters.providers.ssrf import BlockedAddressError, Resolve, SsrfGuard
from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, SendReceipt
from herald.domain.policies import parse_retry_after
from herald.domain.validation import mask

log = structlog.get_logger("herald.providers.webhook")

SIGNATURE_HEADER = "Herald-Signature"
DELIVERY_ID_HEADER = "Herald-Delivery-Id"


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # secrets never echo

    signing_secret: SecretStr
    # Rotation: deliveries also carry a v1 signature under each previous secret until removed,
    # so receivers can switch to the new secret at their own pace.
    previous_signing_secrets: list[SecretStr] = Field(default_factory=list)
    timeout: float = Field(default=10.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    allow_private: bool = False
    # "host" or "host:port" exempt from the address checks, for loopback test receivers.
    allowed_hosts: list[str] = Field(default_factory=list)
    # CIDR blocks allowed although private (an operator's internal webhook range).
    allowed_networks: list[str] = Field(default_factory=list)
    max_redirects: int = Field(default=3, ge=0, le=10)
    max_response_bytes: int = Field(default=4096, ge=0, le=1_048_576)
    pool_size: int = Field(default=100, ge=1)
    user_agent: str = "herald-webhook/1"

    @field_validator("signing_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Herald-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def sign_rotating(secret: bytes, previous: list[bytes], timestamp: int, body: bytes) -> str:
    """``t=..,v1=<current>[,v1=<previous>...]``: one signature per secret in rotation."""
    header = sign(secret, timestamp, body)
    for old in previous:
        header += ",v1=" + sign(old, timestamp, body).partition(",v1=")[2]
    return header


def verify_signature(
    secret: str | bytes, header: str, body: bytes, *, now: float | None = None, tolerance: float = 300.0
) -> bool:
    """What a receiver does: check a ``Herald-Signature`` header against the raw body."""
    key = secret.encode() if isinstance(secret, str) else secret
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(key, timestamp, body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, c) for c in candidates)


def build_body(message: OutboundMessage) -> bytes:
    return orjson.dumps(
        {
            "id": message.delivery_id,
            "notification_id": message.notification_id,
            "user_id": message.user_id,
            "category": message.category,
            "content": message.content,
        }
    )


async def _on_headers_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    # From here on the receiver may act on the request: a failure is ambiguous.
    if ctx.trace_request_ctx is not None:
        ctx.trace_request_ctx.sent = True


class WebhookProvider:
    name = "webhook"

    def __init__(
        self,
        config: WebhookConfig,
        *,
        clock: Callable[[], float] = time.time,
        resolve: Resolve | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._secret = config.signing_secret.get_secret_value().encode()
        self._previous = [x.get_secret_value().encode() for x in config.previous_signing_secrets]
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
                # Receivers belong to different users: never carry a cookie from one to another.
                cookie_jar=aiohttp.DummyCookieJar(),
                trace_configs=[trace],
                headers={"User-Agent": self.config.user_agent},
            )
        return self._session

    async def send(self, message: OutboundMessage) -> SendReceipt:
        # Connections by priority: critical and high never wait behind low for one (slots.py).
        async with self._slots.slot(message.priority.rank):
            return await self._send(message)

    async def _send(self, message: OutboundMessage) -> SendReceipt:
        body = build_body(message)
        try:
            vetted = await self.guard.vet(message.address)
            for hop in range(self.config.max_redirects + 1):
                status, receipt, location = await self._post(vetted.url, body, message)
                if receipt is not None:
                    return receipt
                assert location is not None
                # Vet the target before anything else, so a redirect to an internal address
                # is reported as blocked_address whatever the status.
                try:
                    next_url = vetted.url.join(URL(location))
                except (ValueError, TypeError):
                    raise BlockedAddressError("redirect Location is not a valid URL") from None
                target = await self.guard.vet(next_url)
                if status not in (307, 308):
                    raise PermanentDeliveryError(
                        f"endpoint redirected with {status}; only 307/308 are followed", code=str(status)
                    )
                if hop == self.config.max_redirects:
                    break
                vetted = target
        except BlockedAddressError as exc:
            log.warning("webhook.blocked", delivery_id=message.delivery_id, url=mask(message.address),
                        reason=exc.detail)
            raise
        raise PermanentDeliveryError(
            f"more than {self.config.max_redirects} redirects", code="too_many_redirects"
        )

    async def _post(
        self, url: URL, body: bytes, message: OutboundMessage
    ) -> tuple[int, SendReceipt | None, str | None]:
        """POST once. Returns (status, receipt) on success or (status, None, Location) on 3xx."""
        headers = {
            "Content-Type": "application/json",
            DELIVERY_ID_HEADER: message.delivery_id,
            SIGNATURE_HEADER: sign_rotating(self._secret, self._previous, int(self._clock()), body),
        }
        progress = SimpleNamespace(sent=False)
        started = time.perf_counter()
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False, trace_request_ctx=progress
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    # Reading the (small) answer lets the connection go back to the pool.
                    await resp.content.read(self.config.max_response_bytes)
                    log.debug("webhook.accepted", delivery_id=message.delivery_id, url=mask(str(url)),
                              status=status, ms=round((time.perf_counter() - started) * 1000, 2))
                    return status, SendReceipt(code=str(status)), None
                if 300 <= status < 400:
                    location = resp.headers.get("Location")
                    if not location:
                        raise PermanentDeliveryError(f"{status} without a Location", code=str(status))
                    return status, None, location
                snippet = await resp.content.read(self.config.max_response_bytes)
                raise self._classify(status, resp.headers.get("Retry-After"), snippet)
        except DeliveryError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_failure(
                exc, peer="the webhook receiver", timeout=self.config.timeout, sent=progress.sent
            ) from None

    def _classify(self, status: int, retry_after: str | None, snippet: bytes) -> DeliveryError:
        text = snippet.decode("utf-8", "replace").strip()[:200]
        detail = f"HTTP {status}" + (f": {text}" if text else "")
        if status == 410:
            return DeadAddressError(detail, code="410")
        if status in (408, 429) or status >= 500:
            return TransientDeliveryError(
                detail, code=str(status), retry_after=parse_retry_after(retry_after, now=self._clock())
            )
        return PermanentDeliveryError(detail, code=str(status))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
