"""The ``apns`` provider: Apple Push Notification service over HTTP/2 with token auth.

APNs speaks HTTP/2 only, so the client is ``httpx`` with the ``h2`` extra: one ``AsyncClient``
per provider holding one multiplexed connection (``max_connections=1``; the streams the server
allows are shared by every concurrent send).

Token auth: an ES256 JWT (header ``kid``, claims ``iss`` = team id and ``iat``) signed with the
team's ``.p8`` key. Apple rejects a token older than an hour and throttles one refreshed more
often than every 20 minutes, so the token is reused and replaced once it is
``token_refresh_after`` old (45 minutes by default), never per request. ``ExpiredProviderToken``
mints a new one and retries once.

Error classification (``reason`` from the JSON body, then the HTTP status):

* 410 ``Unregistered``/``ExpiredToken`` → dead address, unless the device registered its token
  (``metadata["device_registered_at"]``) at or after the body's ``timestamp``: then the token is
  newer than Apple's verdict and the send fails without deactivating it;
* 400 ``BadDeviceToken`` → dead address;
* 403 ``InvalidProviderToken``/``MissingProviderToken``/``BadCertificate*``/``Forbidden``,
  400 ``BadTopic``/``TopicDisallowed``/``MissingTopic``, 404 ``BadPath`` → configuration error;
* 429 ``TooManyRequests``/``TooManyProviderTokenUpdates``, 500, 503 → transient;
* any other 4xx → permanent.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from herald.adapters.providers.slots import PrioritySlots, reserved_share
from herald.domain.errors import (
    ConfigurationError,
    DeadAddressError,
    DeliveryError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, Priority, SendReceipt
from herald.domain.validation import mask
from herald.ports import Clock

# Concurrent requests (HTTP/2 streams on the one connection) handed out by priority.
_APNS_STREAMS = 256

log = structlog.get_logger("herald.providers.apns")

APNS_PRODUCTION_URL = "https://api.push.apple.com"
APNS_SANDBOX_URL = "https://api.sandbox.push.apple.com"

_CONFIG_REASONS = frozenset({
    "BadTopic", "TopicDisallowed", "MissingTopic", "InvalidProviderToken", "MissingProviderToken",
    "ExpiredProviderToken", "BadCertificate", "BadCertificateEnvironment", "Forbidden",
    "UnrelatedKeyIdInToken", "BadPath", "MethodNotAllowed",
})


class ApnsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team_id: str = Field(min_length=1)
    key_id: str = Field(min_length=1)
    private_key: SecretStr | None = None  # the .p8 PEM, inline
    private_key_file: str | None = None  # or its path
    topic: str = Field(min_length=1)  # the app's bundle id
    sandbox: bool = False
    base_url: str | None = None  # overrides the production/sandbox choice (tests, proxies)
    timeout: float = Field(default=10.0, gt=0)
    verify_tls: bool = True
    ca_file: str | None = None  # CA bundle to trust instead of the system's (a local emulator's)
    # Apple: refresh no more often than every 20 minutes, and before 60.
    token_refresh_after: float = Field(default=45 * 60, ge=20 * 60, le=55 * 60)
    keepalive_seconds: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _one_key_source(self) -> ApnsConfig:
        if (self.private_key is None) == (self.private_key_file is None):
            raise ValueError("set exactly one of private_key and private_key_file")
        return self

    @property
    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return APNS_SANDBOX_URL if self.sandbox else APNS_PRODUCTION_URL

    def load_key(self) -> EllipticCurvePrivateKey:
        field = "providers.apns.private_key" + ("_file" if self.private_key_file else "")
        if self.private_key is not None:
            pem = self.private_key.get_secret_value().encode()
        else:
            assert self.private_key_file is not None  # the validator guarantees one source
            try:
                pem = Path(self.private_key_file).read_bytes()
            except OSError as exc:
                detail = f"{field}: cannot read the key: {exc.strerror}"
                raise ConfigurationError(detail, field=field) from None
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise ConfigurationError(f"{field} is not a PEM (.p8) private key", field=field) from None
        if not isinstance(key, EllipticCurvePrivateKey) or not isinstance(key.curve, SECP256R1):
            raise ConfigurationError(f"{field} must be an ES256 (P-256) key", field=field)
        return key


class _SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass(slots=True, frozen=True)
class _ProviderToken:
    value: str
    issued_at: float


def build_apns_request(message: OutboundMessage, topic: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The APNs headers (without authorization) and JSON payload for one message."""
    content = message.content
    title, body = content.get("title"), content.get("body")
    has_alert = bool(title or body)
    high = message.priority in (Priority.CRITICAL, Priority.HIGH)

    aps: dict[str, Any]
    if has_alert:
        aps = {"alert": {k: str(v) for k, v in (("title", title), ("body", body)) if v}, "sound": "default"}
    else:
        aps = {"content-available": 1}
    payload: dict[str, Any] = {k: v for k, v in (content.get("data") or {}).items() if k != "aps"}
    if content.get("url"):
        payload.setdefault("url", str(content["url"]))
    # The app reports delivered/opened events against this id.
    payload.setdefault("herald_delivery_id", message.delivery_id)
    payload["aps"] = aps

    headers = {
        "apns-topic": topic,
        "apns-push-type": "alert" if has_alert else "background",
        # Apple allows 10 only for pushes that alert; background pushes must be 5.
        "apns-priority": "10" if high and has_alert else "5",
        "apns-expiration": str(max(0, int(message.expires_at))) if message.expires_at is not None else "0",
    }
    collapse = message.metadata.get("collapse_id")
    if collapse:
        headers["apns-collapse-id"] = str(collapse).encode()[:64].decode(errors="ignore")
    return headers, payload


def classify_apns_error(
    status: int,
    reason: str | None,
    *,
    timestamp_ms: float | None = None,
    registered_at: float | None = None,
    retry_after: float | None = None,
) -> DeliveryError:
    code = reason or str(status)
    detail = f"APNs answered {status} {code}"
    if status == 410 or reason in ("Unregistered", "ExpiredToken"):
        if timestamp_ms is not None and registered_at is not None and registered_at * 1000 >= timestamp_ms:
            return PermanentDeliveryError(
                f"{detail}, but the device registered this token after APNs invalidated it "
                f"({registered_at:.0f} >= {timestamp_ms / 1000:.0f}); the token is kept", code=code)
        return DeadAddressError(f"{detail}: the token is no longer valid for this topic", code=code)
    if reason == "BadDeviceToken":
        return DeadAddressError(f"{detail}: not a device token of this environment", code=code)
    if reason in _CONFIG_REASONS or (reason or "").startswith("BadCertificate") or status in (403, 404, 405):
        return ProviderConfigError(detail, code=code)
    if status == 429 or status >= 500:
        return TransientDeliveryError(detail, code=code, retry_after=retry_after)
    return PermanentDeliveryError(detail, code=code)


class ApnsProvider:
    """Sends push notifications to Apple devices."""

    def __init__(
        self,
        config: ApnsConfig,
        *,
        name: str = "apns",
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock: Clock = clock or _SystemClock()
        self._key = config.load_key()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._slots = PrioritySlots(_APNS_STREAMS, reserved_share(_APNS_STREAMS))
        self._token: _ProviderToken | None = None
        self.tokens_minted = 0  # observable by tests and metrics

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            c = self.config
            verify: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=c.ca_file) if c.verify_tls else False
            )
            self._client = httpx.AsyncClient(
                base_url=c.url,
                http1=False,  # HTTP/2 only, as APNs (h2c prior knowledge on an http:// URL)
                http2=True,
                verify=verify,
                timeout=httpx.Timeout(c.timeout),
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1,
                                    keepalive_expiry=c.keepalive_seconds),
                transport=self._transport,
                trust_env=False,
            )
        return self._client

    # Provider tokens ---------------------------------------------------------------------------
    def _provider_token(self) -> str:
        now = self._clock.now()
        current = self._token
        if current is not None and 0 <= now - current.issued_at < self.config.token_refresh_after:
            return current.value
        value = jwt.encode({"iss": self.config.team_id, "iat": int(now)}, self._key, algorithm="ES256",
                           headers={"kid": self.config.key_id})
        self._token = _ProviderToken(value=value, issued_at=float(int(now)))
        self.tokens_minted += 1
        log.info("provider.apns.provider_token_minted", key_id=self.config.key_id,
                 previous_age=None if current is None else round(now - current.issued_at))
        return value

    def _discard_token(self, stale: str) -> None:
        # Only the first of many concurrent rejections replaces the token.
        if self._token is not None and self._token.value == stale:
            self._token = None

    # Sending -----------------------------------------------------------------------------------
    async def _post(self, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        try:
            return await self._http().post(path, headers=headers, content=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientDeliveryError(f"APNs unreachable: {type(exc).__name__}", code="connect") from None
        except httpx.ReadTimeout:
            raise TransientDeliveryError("APNs did not answer in time", code="timeout",
                                         ambiguous=True) from None
        except httpx.ReadError:
            raise TransientDeliveryError("APNs connection lost before the answer", code="disconnected",
                                         ambiguous=True) from None
        except httpx.TransportError as exc:
            # Write timeouts and protocol refusals (GOAWAY, refused stream): not processed.
            raise TransientDeliveryError(f"APNs request failed: {type(exc).__name__}", code="http") from None

    async def send(self, message: OutboundMessage) -> SendReceipt:
        # Connections by priority: critical and high never wait behind low for one (slots.py).
        async with self._slots.slot(message.priority.rank):
            return await self._send(message)

    async def _send(self, message: OutboundMessage) -> SendReceipt:
        headers, payload = build_apns_request(message, self.config.topic)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        path = f"/3/device/{quote(message.address, safe='')}"
        token = self._provider_token()
        resp = await self._post(path, {**headers, "authorization": f"bearer {token}"}, body)
        reason, timestamp = _reason(resp)
        if resp.status_code == 403 and reason == "ExpiredProviderToken":
            log.info("provider.apns.expired_provider_token_retry", delivery_id=message.delivery_id)
            self._discard_token(token)
            token = self._provider_token()
            resp = await self._post(path, {**headers, "authorization": f"bearer {token}"}, body)
            reason, timestamp = _reason(resp)
        if resp.status_code == 200:
            log.debug("provider.apns.accepted", delivery_id=message.delivery_id, token=mask(message.address),
                      apns_id=resp.headers.get("apns-id"))
            return SendReceipt(code="200", provider_message_id=resp.headers.get("apns-id"))
        registered = message.metadata.get("device_registered_at")
        error = classify_apns_error(
            resp.status_code, reason, timestamp_ms=timestamp,
            registered_at=float(registered) if isinstance(registered, int | float) else None,
            retry_after=_retry_after(resp.headers.get("retry-after"), self._clock.now()),
        )
        log.info("provider.apns.rejected", delivery_id=message.delivery_id, token=mask(message.address),
                 status=resp.status_code, code=error.code, outcome=error.outcome,
                 apns_id=resp.headers.get("apns-id"))
        raise error

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _reason(resp: httpx.Response) -> tuple[str | None, float | None]:
    if resp.status_code == 200 or not resp.content:
        return None, None
    try:
        body = json.loads(resp.content)
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    reason = body.get("reason") if isinstance(body.get("reason"), str) else None
    ts = body.get("timestamp")
    return reason, float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None


__all__ = [
    "APNS_PRODUCTION_URL",
    "APNS_SANDBOX_URL",
    "ApnsConfig",
    "ApnsProvider",
    "build_apns_request",
    "classify_apns_error",
]
