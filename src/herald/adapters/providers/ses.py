"""The ``ses`` provider: Amazon SES v2 ``SendEmail`` (``POST /v2/email/outbound-emails``).

Why botocore's signer over aiohttp rather than aiobotocore: herald needs one operation. The
request body is built here in the shape of botocore's ``sesv2`` model (the tests validate it
with ``botocore.validate.ParamValidator`` and compare it with botocore's own serializer), signed
with ``botocore.auth.SigV4Auth`` (no hand-written signature) and sent on one long-lived
``aiohttp.ClientSession``, the client the architecture measured fastest. aiobotocore would add a
second HTTP stack, pins botocore to exact versions, and its retry layer would hide the
outcomes the deliver service must classify itself.

Content: ``Content.Simple`` (subject, text, html) unless the message carries an unsubscribe
URL, in which case a MIME message goes as ``Content.Raw`` so that ``List-Unsubscribe`` and
``List-Unsubscribe-Post`` (RFC 8058 one-click) are present. ``EmailTags`` carry
``herald_delivery_id`` (and the category), so SES event notifications map back to a delivery.
The receipt's ``provider_message_id`` is SES's ``MessageId``.

Credentials: the static keys of :class:`SesConfig`, or, when ``access_key_id`` is not set,
botocore's default chain (environment, shared files, instance or task role), refreshed off the
event loop.

Classification (the ``x-amzn-ErrorType`` header, else ``__type``/``code`` in the JSON body):

* ``TooManyRequestsException``, ``ThrottlingException``, ``LimitExceededException``, 429 and
  5xx → transient;
* ``AccountSuspendedException``, ``SendingPausedException``,
  ``MailFromDomainNotVerifiedException``, ``NotFoundException`` (the identity or configuration
  set), 401/403 (``AccessDenied``, ``InvalidSignatureException``,
  ``UnrecognizedClientException``, ...) → configuration error;
* an answer of any type whose message says that an identity of ours is not verified ("Email
  address is not verified. The following identities failed the check…": the sender, or, while
  the account is in the sandbox, the recipient), that the account is in the sandbox, that a
  configuration set does not exist, that our credentials expired or are not authorised →
  configuration error. SES says these as ``MessageRejected`` (400); failing the user's email
  permanently for them blamed the user for herald's setup;
* ``MessageRejected``, ``BadRequestException`` and any other 4xx → permanent;
* connection failures → transient; a timeout after the request was sent → transient and
  ambiguous.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import re
import time
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import structlog
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from herald.adapters.providers.http import transport_failure
from herald.adapters.providers.slots import PrioritySlots, reserved_share
from herald.domain.errors import (
    DeliveryError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, SendReceipt
from herald.domain.policies import parse_retry_after
from herald.domain.validation import mask

log = structlog.get_logger("herald.providers.ses")

SEND_EMAIL_PATH = "/v2/email/outbound-emails"
DELIVERY_TAG = "herald_delivery_id"
CATEGORY_TAG = "herald_category"

_TRANSIENT = frozenset({
    "TooManyRequestsException", "ThrottlingException", "Throttling", "LimitExceededException",
    "InternalFailure", "InternalServerError", "ServiceUnavailable", "ServiceUnavailableException",
    "RequestTimeout", "RequestTimeoutException",
})
# Messages that are about herald's account, identities or credentials, whatever the error type.
_OUR_SETUP = re.compile(
    r"not verified|identities failed the check|sandbox|configuration set .{0,200}does not exist"
    r"|not authori[sz]ed to perform|security token .{0,80}(expired|invalid)|sending (is )?paused"
    r"|account .{0,40}suspended",
    re.IGNORECASE,
)
_CONFIG = frozenset({
    "InvalidAccessKeyId", "RequestExpired", "ConfigurationSetDoesNotExistException",
    "AuthorizationErrorException",
    "AccountSuspendedException", "SendingPausedException", "MailFromDomainNotVerifiedException",
    "NotFoundException", "AccessDenied", "AccessDeniedException", "InvalidSignatureException",
    "SignatureDoesNotMatch", "IncompleteSignature", "IncompleteSignatureException",
    "UnrecognizedClientException", "InvalidClientTokenId", "MissingAuthenticationToken",
    "MissingAuthenticationTokenException", "ExpiredToken", "ExpiredTokenException", "NotAuthorized",
    "OptInRequired",
})
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class SesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # secrets never echo

    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    endpoint_url: str | None = None  # default https://email.<region>.amazonaws.com
    from_address: str
    from_name: str | None = None
    configuration_set: str | None = None
    timeout: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    pool_size: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> SesConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "access_key_id and secret_access_key go together (or neither, for the default chain)"
            )
        return self

    @property
    def url(self) -> str:
        base = self.endpoint_url or f"https://email.{self.region}.amazonaws.com"
        return base.rstrip("/") + SEND_EMAIL_PATH


def _tag_value(value: str) -> str:
    return _TAG_UNSAFE.sub("_", value)[:256] or "_"


def _sender(config: SesConfig) -> str:
    if config.from_name:
        return formataddr((config.from_name, config.from_address), charset="utf-8")
    return config.from_address


def build_mime(config: SesConfig, message: OutboundMessage) -> bytes:
    """The raw message used when headers SES's simple content cannot carry are needed."""
    content = message.content
    msg = EmailMessage()
    msg["From"] = _sender(config)
    msg["To"] = message.address
    msg["Subject"] = str(content.get("subject") or "")
    msg["Date"] = formatdate(usegmt=True)
    msg["X-Herald-Delivery-Id"] = message.delivery_id
    if message.unsubscribe_url:
        msg["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    text = content.get("text")
    html = content.get("html")
    # SES wants 7-bit raw messages: encode the parts rather than send 8bit text.
    msg.set_content(str(text) if text is not None else "", subtype="plain", charset="utf-8",
                    cte="quoted-printable")
    if html:
        msg.add_alternative(str(html), subtype="html", charset="utf-8", cte="quoted-printable")
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF line ends, as on the wire


def build_params(config: SesConfig, message: OutboundMessage) -> dict[str, Any]:
    """``SendEmail`` input in botocore's shape (``Raw.Data`` as bytes, a blob)."""
    content = message.content
    email_content: dict[str, Any]
    if message.unsubscribe_url:
        email_content = {"Raw": {"Data": build_mime(config, message)}}
    else:
        body: dict[str, Any] = {}
        if content.get("text") is not None or not content.get("html"):
            body["Text"] = {"Data": str(content.get("text") or ""), "Charset": "UTF-8"}
        if content.get("html"):
            body["Html"] = {"Data": str(content["html"]), "Charset": "UTF-8"}
        subject = {"Data": str(content.get("subject") or ""), "Charset": "UTF-8"}
        email_content = {"Simple": {"Subject": subject, "Body": body}}
    params: dict[str, Any] = {
        "FromEmailAddress": _sender(config),
        "Destination": {"ToAddresses": [message.address]},
        "Content": email_content,
        "EmailTags": [
            {"Name": DELIVERY_TAG, "Value": _tag_value(message.delivery_id)},
            {"Name": CATEGORY_TAG, "Value": _tag_value(message.category)},
        ],
    }
    if config.configuration_set:
        params["ConfigurationSetName"] = config.configuration_set
    return params


def _json_default(value: object) -> str:
    if isinstance(value, bytes):  # rest-json sends blobs as base64 strings
        return base64.b64encode(value).decode("ascii")
    raise TypeError(type(value).__name__)


def to_json(params: dict[str, Any]) -> bytes:
    return orjson.dumps(params, default=_json_default)


def error_code(headers: Any, body: bytes) -> tuple[str | None, str]:
    """(error name, message) of an SES error response, as botocore's rest-json parser reads it."""
    data: dict[str, Any] = {}
    try:
        parsed = orjson.loads(body) if body else {}
        if isinstance(parsed, dict):
            data = parsed
    except orjson.JSONDecodeError:
        pass
    code: str | None = None
    header = headers.get("x-amzn-ErrorType")
    if header:
        code = header.split(":", 1)[0]
    else:
        raw = data.get("__type") or data.get("code") or data.get("Code")
        if isinstance(raw, str):
            code = raw.rsplit("#", 1)[-1]
    text = data.get("message") or data.get("Message") or ""
    return code, str(text)[:300]


def classify(status: int, headers: Any, body: bytes, *, now: float) -> DeliveryError:
    code, text = error_code(headers, body)
    name = code or f"HTTP{status}"
    detail = f"{status} {name}" + (f": {text}" if text else "")
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    if name in _TRANSIENT or status == 429 or status >= 500:
        return TransientDeliveryError(detail, code=name, retry_after=retry_after)
    if name in _CONFIG or status in (401, 403) or (text and _OUR_SETUP.search(text)):
        return ProviderConfigError(detail, code=name)
    return PermanentDeliveryError(detail, code=name)


async def _on_headers_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    if ctx.trace_request_ctx is not None:
        ctx.trace_request_ctx.sent = True


class SesProvider:
    name = "ses"

    def __init__(self, config: SesConfig) -> None:
        self.config = config
        self._url = config.url
        self._static: Credentials | None = None
        if config.access_key_id and config.secret_access_key:
            self._static = Credentials(
                config.access_key_id,
                config.secret_access_key.get_secret_value(),
                config.session_token.get_secret_value() if config.session_token else None,
            )
        self._chain: Any = None  # botocore's credential chain, found on first use
        self._session: aiohttp.ClientSession | None = None
        self._slots = PrioritySlots(self.config.pool_size, reserved_share(self.config.pool_size))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_on_headers_sent)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.pool_size),
                timeout=aiohttp.ClientTimeout(
                    total=self.config.timeout,
                    sock_connect=min(self.config.connect_timeout, self.config.timeout),
                ),
                trace_configs=[trace],
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _credentials(self) -> Credentials:
        if self._static is not None:
            return self._static
        # The chain may call the instance metadata service or read files: not on the loop.
        frozen = await asyncio.to_thread(self._frozen_chain_credentials)
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    def _frozen_chain_credentials(self) -> Any:
        if self._chain is None:
            import botocore.session  # noqa: PLC0415 - only needed without static keys

            self._chain = botocore.session.get_session().get_credentials()
            if self._chain is None:
                raise ProviderConfigError("no AWS credentials configured or found", code="NoCredentials")
        return self._chain.get_frozen_credentials()

    async def signed_headers(self, body: bytes) -> dict[str, str]:
        request = AWSRequest(method="POST", url=self._url, data=body,
                             headers={"Content-Type": "application/json"})
        SigV4Auth(await self._credentials(), "ses", self.config.region).add_auth(request)
        return dict(request.headers.items())

    async def send(self, message: OutboundMessage) -> SendReceipt:
        # Connections by priority: critical and high never wait behind low for one (slots.py).
        async with self._slots.slot(message.priority.rank):
            return await self._send(message)

    async def _send(self, message: OutboundMessage) -> SendReceipt:
        body = to_json(build_params(self.config, message))
        headers = await self.signed_headers(body)
        progress = SimpleNamespace(sent=False)
        started = time.perf_counter()
        try:
            async with self._client().post(
                self._url, data=body, headers=headers, allow_redirects=False, trace_request_ctx=progress
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    error = classify(resp.status, resp.headers, raw, now=time.time())
                    log.info("ses.refused", delivery_id=message.delivery_id, to=mask(message.address),
                             status=resp.status, code=error.code)
                    raise error
        except DeliveryError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_failure(
                exc, peer="SES", timeout=self.config.timeout, sent=progress.sent
            ) from None
        try:
            message_id = orjson.loads(raw).get("MessageId")
        except (orjson.JSONDecodeError, AttributeError):
            message_id = None
        if not isinstance(message_id, str) or not message_id:
            # SES took the request (200) but the answer is unreadable: do not send again.
            log.warning("ses.no_message_id", delivery_id=message.delivery_id)
            message_id = None
        log.debug("ses.accepted", delivery_id=message.delivery_id, to=mask(message.address),
                  message_id=message_id, ms=round((time.perf_counter() - started) * 1000, 2))
        return SendReceipt(code="200", provider_message_id=message_id)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
