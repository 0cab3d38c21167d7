"""SmtpProvider against a real SMTP server (aiosmtpd, tests/support/smtp.py): replies by stage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from herald.adapters.providers.smtp import SmtpConfig, SmtpProvider
from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, Priority
from tests.support.smtp import SmtpTestServer


@pytest.fixture
def server() -> Iterator[SmtpTestServer]:
    s = SmtpTestServer().start()
    try:
        yield s
    finally:
        s.stop()


def _message(address: str = "ada@example.org") -> OutboundMessage:
    return OutboundMessage(
        delivery_id="dlv_smtp1",
        notification_id="ntf_smtp1",
        user_id="u1",
        channel="email",
        address=address,
        content={"subject": "Hi", "text": "Hello"},
        category="transactional",
        priority=Priority.NORMAL,
        attempt=1,
    )


async def _send(server: SmtpTestServer) -> DeliveryError | None:
    provider = SmtpProvider(SmtpConfig(port=server.port, from_address="noreply@herald.test", timeout=5))
    try:
        await provider.send(_message())
    except DeliveryError as exc:
        return exc
    finally:
        await provider.close()
    return None


@pytest.mark.parametrize(
    ("stage", "reply", "error", "code"),
    [
        # A dead mailbox is a dead mailbox whether the server says so at RCPT or after the data.
        (
            "rcpt",
            "550 5.1.1 <ada@example.org>: Recipient address rejected: User unknown",
            DeadAddressError,
            "550 5.1.1",
        ),
        (
            "data",
            "550 5.1.1 The email account that you tried to reach does not exist",
            DeadAddressError,
            "550 5.1.1",
        ),
        ("data", "554 5.1.1 Delivery error: dsn=5.1.1, mailbox unavailable", DeadAddressError, "554 5.1.1"),
        (
            "data",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found",
            DeadAddressError,
            "550 5.1.10",
        ),
        (
            "data",
            "553 5.1.3 The recipient address is not a valid RFC 5321 address",
            DeadAddressError,
            "553 5.1.3",
        ),
        ("rcpt", "550 Requested action not taken: mailbox unavailable", DeadAddressError, "550"),
        # At DATA, a 5xx without a mailbox code is about the message: permanent, address kept.
        (
            "data",
            "550 5.7.1 Message rejected as spam by Content Filtering",
            PermanentDeliveryError,
            "550 5.7.1",
        ),
        ("data", "552 5.3.4 Message size exceeds fixed limit", PermanentDeliveryError, "552 5.3.4"),
        ("data", "550 Message content rejected", PermanentDeliveryError, "550"),
        ("data", "451 4.3.0 Mail server temporarily rejected message", TransientDeliveryError, "451 4.3.0"),
        ("rcpt", "450 4.2.1 Mailbox busy, try later", TransientDeliveryError, "450 4.2.1"),
    ],
)
async def test_replies_are_classified_by_what_they_say(
    server: SmtpTestServer, stage: str, reply: str, error: type[DeliveryError], code: str
) -> None:
    (server.handler.rcpt_replies if stage == "rcpt" else server.handler.data_replies).append(reply)
    exc = await _send(server)
    assert type(exc) is error, (reply, exc)
    assert exc is not None and exc.code == code
    assert exc.ambiguous is False
    assert await _send(server) is None  # the next message goes through: the connection is fine
