"""The ``fcm`` provider: Firebase Cloud Messaging HTTP v1 with a service account.

Authentication is the OAuth 2 service-account flow: an RS256 JWT assertion signed with the
account's key is exchanged at the account's ``token_uri`` for a bearer access token, which is
cached and refreshed ``token_refresh_margin`` seconds before it expires (one refresh at a time,
however many sends are waiting). A 401 on a send refreshes the token once and retries once.

Error classification (the ``FcmError.errorCode`` detail first, then the HTTP status):

* ``UNREGISTERED`` (404) → dead address (the device token is deactivated);
* ``INVALID_ARGUMENT`` (400) about the registration token → dead address, otherwise permanent;
* ``QUOTA_EXCEEDED`` (429), ``UNAVAILABLE`` (503), ``INTERNAL`` (500) → transient, honouring
  ``Retry-After``;
* ``SENDER_ID_MISMATCH`` (403), ``THIRD_PARTY_AUTH_ERROR`` (401), a 401 that survives a token
  refresh, or a rejected service account at the token endpoint → configuration error.

aiohttp is the client (see ARCHITECTURE.md: several times faster than httpx here); one session
per provider, created lazily inside the running loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

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

log = structlog.get_logger("herald.providers.fcm")

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_ASSERTION_LIFETIME = 3600  # Google's maximum for a JWT assertion


class FcmServiceAccount(BaseModel):
    """The fields herald uses from a Google service-account JSON key file (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    project_id: str = Field(min_length=1)
    client_email: str = Field(min_length=1)
    private_key: SecretStr
    private_key_id: str | None = None
    token_uri: str = GOOGLE_TOKEN_URI


class FcmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service_account: FcmServiceAccount | None = None  # the key file's content, inline
    service_account_file: str | None = None  # or the path of the key file
    project_id: str | None = None  # defaults to the service account's project
    base_url: str = "https://fcm.googleapis.com"
    timeout: float = Field(default=10.0, gt=0)
    token_refresh_margin: float = Field(default=300.0, ge=0)
    max_connections: int = Field(default=100, ge=1, le=4096)

    @model_validator(mode="after")
    def _one_account_source(self) -> FcmConfig:
        if (self.service_account is None) == (self.service_account_file is None):
            raise ValueError("set exactly one of service_account and service_account_file")
        return self

    def load_service_account(self) -> FcmServiceAccount:
        if self.service_account is not None:
            return self.service_account
        assert self.service_account_file is not None  # the validator guarantees one source
        field = "providers.fcm.service_account_file"
        try:
            raw = Path(self.service_account_file).read_text(encoding="utf-8")
            return FcmServiceAccount.model_validate(json.loads(raw))
        except OSError as exc:
            detail = f"{field}: cannot read the key file: {exc.strerror}"
            raise ConfigurationError(detail, field=field) from None
        except (ValueError, ValidationError) as exc:
            raise ConfigurationError(f"{field}: not a service-account JSON key: {exc}", field=field) from None


class _SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass(slots=True, frozen=True)
class _AccessToken:
    value: str
    refresh_at: float  # when to fetch the next one (before the real expiry)


def _string_value(value: Any) -> str:
    # FCM data values must be strings; anything else travels as its JSON text.
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def build_fcm_request(message: OutboundMessage, now: float) -> dict[str, Any]:
    """The ``SendMessageRequest`` body for one device token."""
    content = message.content
    title, body = content.get("title"), content.get("body")
    has_alert = bool(title or body)
    high = message.priority in (Priority.CRITICAL, Priority.HIGH)
    url = content.get("url")

    data = {str(k): _string_value(v) for k, v in (content.get("data") or {}).items()}
    if url:
        data.setdefault("url", str(url))
    # The client reports delivered/opened events against this id.
    data.setdefault("herald_delivery_id", message.delivery_id)

    ttl = None if message.expires_at is None else max(0, int(message.expires_at - now))
    collapse = message.metadata.get("collapse_id")

    msg: dict[str, Any] = {"token": message.address, "data": data}
    if has_alert:
        msg["notification"] = {k: str(v) for k, v in (("title", title), ("body", body)) if v}

    android: dict[str, Any] = {"priority": "HIGH" if high else "NORMAL"}
    if ttl is not None:
        android["ttl"] = f"{ttl}s"
    if collapse:
        android["collapseKey"] = str(collapse)

    # Apple allows priority 10 only for alerts; background pushes must be 5.
    apns_headers = {
        "apns-push-type": "alert" if has_alert else "background",
        "apns-priority": "10" if high and has_alert else "5",
    }
    if message.expires_at is not None:
        apns_headers["apns-expiration"] = str(max(0, int(message.expires_at)))
    if collapse:
        apns_headers["apns-collapse-id"] = str(collapse)[:64]
    apns: dict[str, Any] = {"headers": apns_headers}
    if not has_alert:
        apns["payload"] = {"aps": {"content-available": 1}}

    urgency = "high" if high else ("very-low" if message.priority is Priority.LOW else "normal")
    webpush: dict[str, Any] = {"headers": {"Urgency": urgency}}
    if ttl is not None:
        webpush["headers"]["TTL"] = str(ttl)
    if isinstance(url, str) and url.startswith("https://"):
        webpush["fcmOptions"] = {"link": url}

    msg.update(android=android, apns=apns, webpush=webpush)
    return {"message": msg}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _error_parts(payload: Any) -> tuple[str | None, str | None, str, bool]:
    """(FCM errorCode, google.rpc status, message, whether a field violation names the token)."""
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return None, None, "", False
    fcm_code: str | None = None
    about_token = False
    for detail in err.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == _FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
            fcm_code = detail["errorCode"]
        elif detail.get("@type") == _BAD_REQUEST_TYPE:
            for violation in detail.get("fieldViolations") or []:
                if isinstance(violation, dict) and str(violation.get("field", "")).endswith("token"):
                    about_token = True
    status = err.get("status") if isinstance(err.get("status"), str) else None
    message = str(err.get("message") or "")
    lowered = message.lower()
    if "registration token" in lowered or "fcm token" in lowered:
        about_token = True
    return fcm_code, status, message, about_token


def classify_fcm_error(status: int, payload: Any, retry_after: float | None) -> DeliveryError:
    fcm_code, rpc_status, text, about_token = _error_parts(payload)
    code = fcm_code or rpc_status or str(status)
    detail = f"FCM answered {status} {code}: {text[:200]}".rstrip(": ")
    if code == "UNREGISTERED":
        return DeadAddressError(detail, code=code)
    if code == "INVALID_ARGUMENT" or (status == 400 and fcm_code is None):
        if about_token:
            return DeadAddressError(detail, code=code)
        return PermanentDeliveryError(detail, code=code)
    if code in ("SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR") or status in (401, 403):
        return ProviderConfigError(detail, code=code)
    if code == "QUOTA_EXCEEDED" or status == 429:
        return TransientDeliveryError(detail, code=code, retry_after=retry_after)
    if code in ("UNAVAILABLE", "INTERNAL") or status >= 500:
        return TransientDeliveryError(detail, code=code, retry_after=retry_after)
    if status == 404:
        # Without an UNREGISTERED detail a 404 means the project (our setup) does not exist.
        return ProviderConfigError(detail, code=code)
    return PermanentDeliveryError(detail, code=code)


class FcmProvider:
    """Sends push notifications through FCM HTTP v1."""

    def __init__(
        self,
        config: FcmConfig,
        *,
        name: str = "fcm",
        clock: Clock | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock: Clock = clock or _SystemClock()
        self._account = config.load_service_account()
        self._key = self._load_key(self._account)
        project = config.project_id or self._account.project_id
        self._send_url = f"{config.base_url.rstrip('/')}/v1/projects/{quote(project, safe='')}/messages:send"
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._slots = PrioritySlots(self.config.max_connections, reserved_share(self.config.max_connections))
        self._token: _AccessToken | None = None
        self._token_lock = asyncio.Lock()
        self.token_refreshes = 0  # observable by tests and metrics

    @staticmethod
    def _load_key(account: FcmServiceAccount) -> RSAPrivateKey:
        field = "providers.fcm.service_account.private_key"
        try:
            key = load_pem_private_key(account.private_key.get_secret_value().encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigurationError(f"{field} is not a PEM private key", field=field) from None
        if not isinstance(key, RSAPrivateKey):
            raise ConfigurationError(f"{field} must be an RSA key", field=field)
        return key

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                    connector=aiohttp.TCPConnector(limit=self.config.max_connections),
                    raise_for_status=False,
                )
        return self._session

    # Access tokens ---------------------------------------------------------------------------
    def _assertion(self, now: int) -> str:
        claims = {
            "iss": self._account.client_email,
            "scope": FCM_SCOPE,
            "aud": self._account.token_uri,
            "iat": now,
            "exp": now + _ASSERTION_LIFETIME,
        }
        headers = {"kid": self._account.private_key_id} if self._account.private_key_id else None
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)

    async def _access_token(self, *, stale: str | None = None) -> str:
        """The cached token, or a fresh one when it is due (or equals ``stale``, rejected)."""
        current = self._token
        if current is not None and current.value != stale and self._clock.now() < current.refresh_at:
            return current.value
        async with self._token_lock:
            current = self._token
            if current is not None and current.value != stale and self._clock.now() < current.refresh_at:
                return current.value  # another send refreshed it while we waited
            self._token = await self._fetch_token()
            return self._token.value

    async def _fetch_token(self) -> _AccessToken:
        issued = self._clock.now()
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self._assertion(int(issued))}
        uri = self._account.token_uri
        try:
            async with self._http().post(uri, data=form, headers={"accept": "application/json"}) as resp:
                status = resp.status
                raw = await resp.read()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), issued)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientDeliveryError(f"FCM token endpoint unreachable: {type(exc).__name__}",
                                         code="token_endpoint") from None
        payload = _json(raw)
        if status != 200:
            error = str(payload.get("error", status)) if isinstance(payload, dict) else str(status)
            description = str(payload.get("error_description", "")) if isinstance(payload, dict) else ""
            detail = f"FCM token endpoint answered {status} {error}: {description[:200]}".rstrip(": ")
            log.warning("provider.fcm.access_token_failed", status=status, code=error,
                        client_email=mask(self._account.client_email))
            if status == 429 or status >= 500:
                raise TransientDeliveryError(detail, code=error, retry_after=retry_after)
            raise ProviderConfigError(detail, code=error)
        if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str):
            raise TransientDeliveryError("FCM token endpoint answered without an access_token",
                                         code="token_endpoint")
        try:
            expires_in = float(payload.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600.0
        # Refresh at the margin, but never sooner than half-way through a short-lived token.
        lead = max(expires_in - self.config.token_refresh_margin, expires_in / 2)
        self.token_refreshes += 1
        log.info("provider.fcm.access_token_refreshed", expires_in=expires_in)
        return _AccessToken(value=payload["access_token"], refresh_at=issued + lead)

    # Sending -----------------------------------------------------------------------------------
    async def _post(self, token: str, body: bytes) -> tuple[int, Any, str | None]:
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json; charset=UTF-8"}
        try:
            async with self._http().post(self._send_url, data=body, headers=headers) as resp:
                return resp.status, _json(await resp.read()), resp.headers.get("Retry-After")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Nothing reached FCM.
            raise TransientDeliveryError(f"FCM unreachable: {type(exc).__name__}", code="connect") from None
        except TimeoutError:
            # Connected, so the request was (very probably) sent: FCM may have taken it.
            raise TransientDeliveryError("FCM did not answer in time", code="timeout",
                                         ambiguous=True) from None
        except aiohttp.ServerDisconnectedError:
            raise TransientDeliveryError("FCM closed the connection before answering",
                                         code="disconnected", ambiguous=True) from None
        except aiohttp.ClientError as exc:
            raise TransientDeliveryError(f"FCM request failed: {type(exc).__name__}", code="http") from None

    async def send(self, message: OutboundMessage) -> SendReceipt:
        # Connections by priority: critical and high never wait behind low for one (slots.py).
        async with self._slots.slot(message.priority.rank):
            return await self._send(message)

    async def _send(self, message: OutboundMessage) -> SendReceipt:
        body = json.dumps(build_fcm_request(message, self._clock.now()), ensure_ascii=False).encode()
        token = await self._access_token()
        status, payload, retry_after = await self._post(token, body)
        if status == 401 and _error_parts(payload)[0] != "THIRD_PARTY_AUTH_ERROR":
            # Revoked or expired early: one fresh token, one more try.
            log.info("provider.fcm.unauthenticated_retry", delivery_id=message.delivery_id)
            token = await self._access_token(stale=token)
            status, payload, retry_after = await self._post(token, body)
        if status == 200:
            name = payload.get("name") if isinstance(payload, dict) else None
            log.debug("provider.fcm.accepted", delivery_id=message.delivery_id, token=mask(message.address))
            return SendReceipt(code="200", provider_message_id=name if isinstance(name, str) else None)
        error = classify_fcm_error(status, payload, parse_retry_after(retry_after, self._clock.now()))
        log.info("provider.fcm.rejected", delivery_id=message.delivery_id, token=mask(message.address),
                 status=status, code=error.code, outcome=error.outcome)
        raise error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


__all__ = [
    "FCM_SCOPE",
    "FcmConfig",
    "FcmProvider",
    "FcmServiceAccount",
    "build_fcm_request",
    "classify_fcm_error",
]
