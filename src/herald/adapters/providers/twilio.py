"""The ``twilio`` provider: SMS through the Programmable Messaging API (2010-04-01).

``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP basic auth
(account SID, auth token) and a form-encoded body (``To``, ``Body``, ``From`` and/or
``MessagingServiceSid``, ``StatusCallback``). The delivery id travels in the ``StatusCallback``
URL (``{status_callback_base_url}/v1/webhooks/twilio?delivery_id=...``), so that Twilio's status
callbacks find the delivery again.

Outcome classification (Twilio REST error ``code`` first, then the HTTP status):

* 429, or code 20429 (too many requests), 14107 / 21611 (send-rate or queue limits) → transient,
  honouring ``Retry-After``;
* 5xx → transient;
* 21211 invalid ``To``, 21612 not reachable by SMS, 21614 not a mobile number → dead address;
  21610 the recipient replied STOP → dead address (code ``21610``: suppressed until they opt
  back in);
* 401, 20003 (authentication), 21608 (trial account, unverified ``To``), 20404 (account or
  resource not found), 21212 / 21606 / 21659 (our ``From`` is not usable), 21408 (no permission
  for the destination region) → configuration error: never the user's fault;
* any other 4xx → permanent.

Callbacks are pure functions here (no web framework): :func:`verify_twilio_signature` checks
``X-Twilio-Signature`` and :func:`parse_twilio_callback` turns the form into a
:class:`CallbackEvent`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit, urlunsplit

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from herald.adapters.providers.http import HttpAnswer, Now, ProviderHttp, decode_json, retry_after_seconds
from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    MalformedRequest,
    PermanentDeliveryError,
    PermissionDenied,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import CallbackEvent, CallbackRequest, OutboundMessage, SendReceipt
from herald.domain.validation import mask

log = structlog.get_logger("herald.providers.twilio")

API_VERSION = "2010-04-01"
WEBHOOK_PATH = "/v1/webhooks/twilio"

#: REST error codes (answer to the send request) that say the recipient's number is dead.
DEAD_ADDRESS_CODES = frozenset({21211, 21610, 21612, 21614})
#: REST error codes that say herald's account or sender setup is wrong.
CONFIG_ERROR_CODES = frozenset({20003, 20404, 21212, 21408, 21606, 21608, 21659})
#: REST error codes that are rate or queue limits: try again later.
TRANSIENT_CODES = frozenset({14107, 20429, 21611})
#: ``ErrorCode`` values in a status callback that mean the number itself is dead:
#: the four above plus 30005 (unknown destination handset) and 30006 (landline or
#: unreachable carrier).
CALLBACK_DEAD_CODES = frozenset({"21211", "21610", "21612", "21614", "30005", "30006"})

_LONG_DIGITS = re.compile(r"\+?\d[\d\- ]{5,}\d")


class TwilioConfig(BaseModel):
    """``[providers.twilio]``. One of ``from_number`` or ``messaging_service_sid`` is required."""

    model_config = ConfigDict(extra="forbid")

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr
    from_number: str | None = None
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    # herald's public base URL; without it Twilio sends no status callbacks.
    status_callback_base_url: str | None = None
    base_url: str = "https://api.twilio.com"
    timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=100, ge=1, le=10_000)

    @field_validator("base_url", "status_callback_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _has_sender(self) -> TwilioConfig:
        if not self.from_number and not self.messaging_service_sid:
            raise ValueError("set from_number or messaging_service_sid")
        if not self.auth_token.get_secret_value():
            raise ValueError("auth_token is empty")
        return self


def _redact_numbers(text: str) -> str:
    """Twilio error messages quote the phone number; keep only a masked form of it."""
    return _LONG_DIGITS.sub(lambda m: mask(m.group(0).replace(" ", "").replace("-", "")) or "***", text)


def classify_twilio_error(
    status: int, code: int | None, message: str, *, retry_after: float | None = None
) -> DeliveryError:
    """The :class:`DeliveryError` for a non-2xx answer (``code`` is Twilio's error code)."""
    shown = str(code) if code is not None else str(status)
    detail = (
        f"twilio {status}" + (f" code {code}" if code is not None else "") + f": {_redact_numbers(message)}"
    )
    detail = detail[:500]
    if status == 429 or code in TRANSIENT_CODES:
        return TransientDeliveryError(detail, code=shown, retry_after=retry_after)
    if status >= 500:
        return TransientDeliveryError(detail, code=shown, retry_after=retry_after)
    if code in DEAD_ADDRESS_CODES:
        return DeadAddressError(detail, code=shown)
    if status == 401 or code in CONFIG_ERROR_CODES:
        return ProviderConfigError(detail, code=shown)
    if 400 <= status < 500:
        return PermanentDeliveryError(detail, code=shown)
    # 1xx/3xx: the API never answers so; treat as a fault on the way there.
    return TransientDeliveryError(detail, code=shown)


class TwilioProvider:
    name = "twilio"

    def __init__(self, config: TwilioConfig, *, now: Now = time.time) -> None:
        self.config = config
        self._now = now
        token = f"{config.account_sid}:{config.auth_token.get_secret_value()}"
        self._http = ProviderHttp(
            provider=self.name,
            base_url=config.base_url,
            timeout=config.timeout,
            headers={
                "Authorization": "Basic " + base64.b64encode(token.encode()).decode("ascii"),
                "Accept": "application/json",
                "User-Agent": "herald",
            },
            max_connections=config.max_connections,
        )
        self._url = self._http.url(f"/{API_VERSION}/Accounts/{config.account_sid}/Messages.json")

    def status_callback_url(self, delivery_id: str) -> str | None:
        base = self.config.status_callback_base_url
        if base is None:
            return None
        return f"{base}{WEBHOOK_PATH}?delivery_id={quote(delivery_id, safe='')}"

    def build_form(self, message: OutboundMessage) -> list[tuple[str, str]]:
        text = message.content.get("text")
        if text is None or not str(text).strip():
            raise PermanentDeliveryError("sms content has no text", code="empty_body")
        form = [("To", message.address), ("Body", str(text))]
        if self.config.messaging_service_sid:
            form.append(("MessagingServiceSid", self.config.messaging_service_sid))
        if self.config.from_number:
            form.append(("From", self.config.from_number))
        callback = self.status_callback_url(message.delivery_id)
        if callback is not None:
            form.append(("StatusCallback", callback))
        return form

    async def send(self, message: OutboundMessage) -> SendReceipt:
        body = urlencode(self.build_form(message)).encode("ascii")
        started = time.perf_counter()
        try:
            answer = await self._http.post(
                self._url,
                body=body,
                content_type="application/x-www-form-urlencoded",
                rank=message.priority.rank,
            )
        except DeliveryError as exc:
            log.warning(
                "providers.twilio.transport_error",
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
        error = self._error(answer)
        log.warning(
            "providers.twilio.rejected",
            delivery_id=message.delivery_id,
            to=mask(message.address),
            status=answer.status,
            code=error.code,
            outcome=error.outcome,
            retry_after=error.retry_after,
            latency_ms=latency_ms,
        )
        raise error

    def _receipt(self, answer: HttpAnswer) -> SendReceipt:
        data = decode_json(answer.body)
        sid = data.get("sid") if isinstance(data, dict) else None
        state = data.get("status") if isinstance(data, dict) else None
        return SendReceipt(
            code=str(answer.status),
            provider_message_id=sid if isinstance(sid, str) else None,
            detail=state if isinstance(state, str) else None,
        )

    def _error(self, answer: HttpAnswer) -> DeliveryError:
        data = decode_json(answer.body)
        code: int | None = None
        message = answer.body[:200].decode("utf-8", "replace") or "(empty body)"
        if isinstance(data, dict):
            raw_code = data.get("code")
            if isinstance(raw_code, int) or (isinstance(raw_code, str) and raw_code.isdigit()):
                code = int(raw_code)
            if isinstance(data.get("message"), str):
                message = data["message"]
        retry_after = retry_after_seconds(answer.headers, now=self._now())
        return classify_twilio_error(answer.status, code, message, retry_after=retry_after)

    def verify_callback(self, url: str, params: Mapping[str, str], signature: str) -> bool:
        """Check a status callback's ``X-Twilio-Signature`` with this account's token."""
        return verify_twilio_signature(url, params, signature, self.config.auth_token.get_secret_value())

    def parse_callback(self, request: CallbackRequest, *, public_base: str) -> list[CallbackEvent]:
        """A message status callback (form fields), checked against ``X-Twilio-Signature``.

        Twilio signs the URL it called: the configured ``status_callback_base_url`` (else
        herald's public URL) with the request's path and query.
        """
        try:
            params = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise MalformedRequest("the callback body is not UTF-8 form data") from None
        base = (self.config.status_callback_base_url or public_base).rstrip("/")
        url = base + request.path + (f"?{request.query}" if request.query else "")
        if not self.verify_callback(url, params, request.headers.get("x-twilio-signature", "")):
            raise PermissionDenied("the X-Twilio-Signature does not match this request")
        return [parse_twilio_callback(params, url=url)]

    async def close(self) -> None:
        await self._http.close()


# Callbacks ---------------------------------------------------------------------------------------


def twilio_signature(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(token, url + each sorted key + value))."""
    data = url + "".join(key + params[key] for key in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _url_variants(url: str) -> list[str]:
    """The URL as given, without its port, and with the scheme's default port.

    Twilio signs the URL as configured, but a proxy in front of herald may add or drop the
    port; Twilio's own helper libraries accept each of these spellings, and so does herald.
    """
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if default is None or parts.hostname is None:
        return [url]
    try:
        port = parts.port
    except ValueError:
        return [url]
    userinfo, _, hostport = parts.netloc.rpartition("@")
    prefix = userinfo + "@" if userinfo else ""
    host = hostport.rsplit(":", 1)[0] if port is not None else hostport
    variants = [url]
    for netloc in (prefix + host, f"{prefix}{host}:{default}"):
        candidate = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        if candidate not in variants:
            variants.append(candidate)
    return variants


def verify_twilio_signature(url: str, params: Mapping[str, str], signature: str, auth_token: str) -> bool:
    """True when ``signature`` (the ``X-Twilio-Signature`` header) signs ``url`` and ``params``.

    ``url`` is the full URL Twilio requested, query string included; ``params`` the form body.
    """
    if not signature or not auth_token:
        return False
    given = signature.strip().encode("utf-8")
    ok = False
    for candidate in _url_variants(url):
        expected = twilio_signature(candidate, params, auth_token).encode("ascii")
        # No early exit: the work done does not depend on which variant matched.
        ok = hmac.compare_digest(expected, given) or ok
    return ok


def _status_for(message_status: str, error_code: str | None) -> str:
    if message_status in ("delivered",):
        return "delivered"
    if message_status == "read":
        return "opened"
    if message_status in ("undelivered", "failed"):
        return "bounced" if error_code in CALLBACK_DEAD_CODES else "failed"
    if message_status == "canceled":
        return "failed"
    # accepted, scheduled, queued, sending, sent, ...: Twilio still has it in hand.
    return "sent"


def parse_twilio_callback(params: Mapping[str, str], *, url: str | None = None) -> CallbackEvent:
    """A Twilio message status callback (form fields) as a :class:`CallbackEvent`.

    ``status`` is ``delivered``, ``failed``, ``bounced`` (a dead-number ``ErrorCode`` such as
    21610, the recipient opted out), ``opened`` (``read``) or ``sent`` for the in-flight states
    (accepted, queued, sending, sent), which the caller need not act on. The delivery id comes
    from the ``delivery_id`` query parameter of ``url`` (the ``StatusCallback`` herald set), or
    from ``params`` when the web layer merged the query into them.
    """
    sid = params.get("MessageSid") or params.get("SmsSid")
    raw_status = params.get("MessageStatus") or params.get("SmsStatus")
    if not sid or not raw_status:
        raise MalformedRequest("twilio callback without MessageSid or MessageStatus")
    raw_status = raw_status.strip().lower()
    delivery_id: str | None = None
    if url is not None:
        values = parse_qs(urlsplit(url).query).get("delivery_id")
        delivery_id = values[0] if values else None
    if delivery_id is None:
        delivery_id = params.get("delivery_id") or None
    error_code = (params.get("ErrorCode") or "").strip() or None
    status = _status_for(raw_status, error_code)
    detail = raw_status if error_code is None else f"{raw_status} (ErrorCode {error_code})"
    return CallbackEvent(
        provider="twilio",
        status=status,
        delivery_id=delivery_id,
        provider_message_id=sid,
        address=params.get("To") or None,
        event_id=f"{sid}:{raw_status}",
        code=error_code,
        detail=detail,
    )
