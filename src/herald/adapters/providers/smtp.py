"""The ``smtp`` provider: aiosmtplib, pooled connections, a proper MIME message.

Each message is sent as MAIL / RCPT / DATA on a pooled connection so that the outcome can be
told apart by stage: a failure before DATA means the server has nothing; a timeout or a lost
connection during DATA (after the final ``.`` was possibly sent) is *ambiguous* — the server
may have queued the message — and is recorded as such.

Reply classification (RFC 5321, RFC 3463 enhanced codes):

* 4xx anywhere → transient;
* 5xx with a dead-mailbox enhanced code (5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10) at RCPT *or at
  DATA* → dead address (the address is suppressed): herald sends one recipient per message,
  so a server that checks mailboxes only after the data (many relays do) speaks of that one;
* 550, 551, 553 without an enhanced code at RCPT → dead address (at DATA such a bare code is
  as often about the content: permanent);
* 5xx on AUTH or MAIL FROM → configuration error (our account or sender is wrong);
* other 5xx → permanent.
"""

from __future__ import annotations

import contextlib
import re
import time
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Literal

import aiosmtplib
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from herald.adapters.providers.slots import PrioritySlots
from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, SendReceipt
from herald.domain.validation import mask

log = structlog.get_logger("herald.providers.smtp")

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")
_DEAD_MAILBOX = {"5.1.1", "5.1.10", "5.1.2", "5.1.3", "5.1.6"}


def enhanced_code(message: str) -> str | None:
    m = _ENHANCED.match(message or "")
    return ".".join(m.groups()) if m else None


class SmtpConfig(BaseModel):
    """``[providers.smtp]``."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None  # prints masked
    security: Literal["none", "starttls", "tls"] = "none"
    validate_certs: bool = True
    timeout: float = Field(default=30.0, gt=0)
    from_address: str = "herald@localhost"
    from_name: str | None = None
    # Connections: critical and high get the next free one first, and `reserved_high` of them
    # only they may use, so a bulk backlog never makes them wait (the bulk keeps 4 by default).
    pool_size: int = Field(default=5, ge=1, le=64)
    reserved_high: int = Field(default=1, ge=0, le=63)


def build_message(cfg: SmtpConfig, message: OutboundMessage, domain: str) -> EmailMessage:
    content = message.content
    msg = EmailMessage()
    msg["Subject"] = str(content.get("subject") or "")
    msg["From"] = formataddr((cfg.from_name, cfg.from_address)) if cfg.from_name else cfg.from_address
    msg["To"] = message.address
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=message.delivery_id.replace("_", "-"), domain=domain)
    msg["X-Herald-Delivery-Id"] = message.delivery_id
    if message.unsubscribe_url:
        msg["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    text = content.get("text")
    html = content.get("html")
    msg.set_content(str(text) if text is not None else "", subtype="plain", charset="utf-8")
    if html:
        msg.add_alternative(str(html), subtype="html", charset="utf-8")
    return msg


def _reply_error(stage: str, code: int, text: str) -> DeliveryError:
    enhanced = enhanced_code(text)
    shown = f"{code} {enhanced}" if enhanced else str(code)
    detail = f"{stage}: {code} {text.strip()[:200]}"
    if 400 <= code < 500:
        return TransientDeliveryError(detail, code=shown)
    if stage in ("auth", "mail"):
        return ProviderConfigError(detail, code=shown)
    if stage in ("rcpt", "data") and enhanced in _DEAD_MAILBOX:
        return DeadAddressError(detail, code=shown)
    if stage == "rcpt" and enhanced is None and code in (550, 551, 553):
        return DeadAddressError(detail, code=shown)
    return PermanentDeliveryError(detail, code=shown)


class _StaleConnection(Exception):
    pass


class SmtpProvider:
    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._idle: list[aiosmtplib.SMTP] = []
        # Connections by priority: critical and high first, `reserved_high` of them theirs alone.
        self._slots = PrioritySlots(config.pool_size, config.reserved_high)
        self._domain = config.from_address.rpartition("@")[2] or "localhost"

    def _client(self) -> aiosmtplib.SMTP:
        c = self.config
        return aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            use_tls=c.security == "tls",
            start_tls=c.security == "starttls",
            validate_certs=c.validate_certs,
            timeout=c.timeout,
        )

    async def _connect(self) -> aiosmtplib.SMTP:
        client = self._client()
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as exc:
            raise _reply_error("connect", exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientDeliveryError(
                f"cannot connect to {self.config.host}:{self.config.port}: {exc}", code="connect"
            ) from None
        if self.config.username:
            try:
                password = self.config.password
                await client.login(self.config.username, password.get_secret_value() if password else "")
            except aiosmtplib.SMTPAuthenticationError as exc:
                with contextlib.suppress(Exception):
                    client.close()
                raise ProviderConfigError(
                    f"auth: {exc.code} {exc.message[:200]}", code=str(exc.code)
                ) from None
            except aiosmtplib.SMTPResponseException as exc:
                client.close()
                raise _reply_error("auth", exc.code, exc.message) from None
            except aiosmtplib.SMTPException as exc:
                client.close()
                raise ProviderConfigError(f"auth: {exc}", code="auth") from None
        return client

    async def _acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
        return await self._connect(), False

    async def send(self, message: OutboundMessage) -> SendReceipt:
        msg = build_message(self.config, message, self._domain)
        async with self._slots.slot(message.priority.rank):
            client, reused = await self._acquire()
            try:
                try:
                    receipt = await self._transact(client, message, msg, reused=reused)
                except _StaleConnection:
                    # A pooled connection the server closed while idle. Nothing of this
                    # message reached the server, so one fresh connection is safe.
                    with contextlib.suppress(Exception):
                        client.close()
                    client = await self._connect()
                    receipt = await self._transact(client, message, msg, reused=False)
            except BaseException:
                with contextlib.suppress(Exception):
                    client.close()
                raise
            if client.is_connected:
                self._idle.append(client)
            return receipt

    async def _transact(
        self, client: aiosmtplib.SMTP, message: OutboundMessage, msg: EmailMessage, *, reused: bool
    ) -> SendReceipt:
        stage = "mail"
        started = time.perf_counter()
        try:
            await client.mail(self.config.from_address)
            stage = "rcpt"
            await client.rcpt(message.address)
            stage = "data"
            response = await client.data(msg.as_bytes())
        except aiosmtplib.SMTPResponseException as exc:
            if reused and stage == "mail" and exc.code == 421:
                raise _StaleConnection from None
            with contextlib.suppress(Exception):
                await client.rset()
            raise _reply_error(stage, exc.code, exc.message) from None
        except aiosmtplib.SMTPServerDisconnected as exc:
            if reused and stage == "mail":
                raise _StaleConnection from None
            raise self._lost(stage, exc) from None
        except (aiosmtplib.SMTPTimeoutError, TimeoutError, OSError) as exc:
            raise self._lost(stage, exc) from None
        except aiosmtplib.SMTPException as exc:
            raise TransientDeliveryError(f"{stage}: {exc}", code="smtp") from None
        log.debug(
            "smtp.accepted",
            delivery_id=message.delivery_id,
            to=mask(message.address),
            code=response.code,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return SendReceipt(
            code=str(response.code), provider_message_id=str(msg["Message-ID"]), detail=response.message[:200]
        )

    @staticmethod
    def _lost(stage: str, exc: BaseException) -> TransientDeliveryError:
        ambiguous = stage == "data"
        return TransientDeliveryError(
            f"{stage}: {type(exc).__name__}: {exc}"
            + (" (the server may have accepted it)" if ambiguous else ""),
            code="timeout" if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError) else "disconnected",
            ambiguous=ambiguous,
        )

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(Exception):
                await client.quit()
