"""SendGridProvider against the SendGrid emulator, which validates every request with SendGrid's spec."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from herald.adapters.providers.sendgrid import (
    SendGridConfig,
    SendGridProvider,
    classify_sendgrid_error,
    parse_sendgrid_events,
    verify_sendgrid_signature,
)
from herald.domain.errors import (
    DeliveryError,
    MalformedRequest,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, Priority
from tests.emulators.sendgrid import DEFAULT_API_KEY, SendGridEmulator

EMAIL = "ada.lovelace@example.com"
NOW = 1_900_000_000.0


@pytest.fixture
async def emulator() -> AsyncIterator[SendGridEmulator]:
    emu = SendGridEmulator(verified_senders={"noreply@herald.example.com"})
    await emu.start()
    yield emu
    await emu.stop()
    # Every request herald sent must have matched SendGrid's OpenAPI document.
    assert emu.spec_errors == []


def config_for(emulator: SendGridEmulator, **overrides: Any) -> SendGridConfig:
    values: dict[str, Any] = {
        "api_key": DEFAULT_API_KEY,
        "from_email": "noreply@herald.example.com",
        "from_name": "Herald",
        "base_url": emulator.url,
        "timeout": 5.0,
        "event_webhook_public_key": emulator.public_key_b64,
    }
    values.update(overrides)
    return SendGridConfig(**values)


@pytest.fixture
async def provider(emulator: SendGridEmulator) -> AsyncIterator[SendGridProvider]:
    p = SendGridProvider(config_for(emulator), now=lambda: NOW)
    yield p
    await p.close()


def mail(
    address: str = EMAIL,
    *,
    delivery_id: str = "dlv_01hzx3k9sendgrid",
    html: str | None = "<p>Welcome, Ada.</p>",
    unsubscribe_url: str | None = None,
    **content: Any,
) -> OutboundMessage:
    body: dict[str, Any] = {"subject": "Welcome to herald", "text": "Welcome, Ada."}
    if html is not None:
        body["html"] = html
    body.update(content)
    return OutboundMessage(
        delivery_id=delivery_id,
        notification_id="ntf_01hzx3k9",
        user_id="user-1",
        channel="email",
        address=address,
        content=body,
        category="transactional",
        priority=Priority.NORMAL,
        attempt=1,
        unsubscribe_url=unsubscribe_url,
    )


# Sending -------------------------------------------------------------------------------------------


async def test_send_is_accepted_and_matches_the_spec(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    receipt = await provider.send(mail())

    [request] = emulator.requests
    assert request.answered == 202
    assert receipt.code == "202"
    assert receipt.provider_message_id == request.message_id
    assert request.headers["Authorization"] == f"Bearer {DEFAULT_API_KEY}"
    body = request.json
    assert body["from"] == {"email": "noreply@herald.example.com", "name": "Herald"}
    assert body["subject"] == "Welcome to herald"
    assert body["personalizations"][0]["to"] == [{"email": EMAIL}]
    assert body["content"] == [
        {"type": "text/plain", "value": "Welcome, Ada."},
        {"type": "text/html", "value": "<p>Welcome, Ada.</p>"},
    ]
    assert "headers" not in body
    assert emulator.spec_errors == []


async def test_delivery_id_travels_in_the_personalization_custom_args(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    await provider.send(mail(delivery_id="dlv_42"))
    body = emulator.requests[0].json
    assert body["personalizations"][0]["custom_args"]["herald_delivery_id"] == "dlv_42"
    # The message-level custom_args is typed "string" in the spec: herald never sends it.
    assert "custom_args" not in body


@pytest.mark.parametrize("where", ["message", "content"])
async def test_unsubscribe_url_adds_list_unsubscribe_headers(
    emulator: SendGridEmulator, provider: SendGridProvider, where: str
) -> None:
    url = "https://herald.example.com/v1/unsubscribe/tok123"
    message = mail(unsubscribe_url=url) if where == "message" else mail()
    if where == "content":
        message.content["unsubscribe_url"] = url
    await provider.send(message)
    assert emulator.requests[0].json["headers"] == {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


async def test_text_only_mail(emulator: SendGridEmulator, provider: SendGridProvider) -> None:
    await provider.send(mail(html=None))
    assert emulator.requests[0].json["content"] == [{"type": "text/plain", "value": "Welcome, Ada."}]


async def test_sandbox_mode_is_accepted_with_200(emulator: SendGridEmulator) -> None:
    provider = SendGridProvider(config_for(emulator, sandbox=True))
    try:
        receipt = await provider.send(mail())
    finally:
        await provider.close()
    assert receipt.code == "200"
    assert emulator.requests[0].json["mail_settings"] == {"sandbox_mode": {"enable": True}}


async def test_missing_subject_or_body_fails_before_calling_sendgrid(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(mail(subject=""))
    assert info.value.code == "empty_subject"
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(mail(html=None, text=""))
    assert info.value.code == "empty_body"
    assert emulator.requests == []


async def test_one_kept_alive_connection_serves_consecutive_sends(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    for n in range(3):
        await provider.send(mail(delivery_id=f"dlv_{n}"))
    assert len({r.peer for r in emulator.requests}) == 1


async def test_emulator_rejects_a_request_that_breaks_the_spec(emulator: SendGridEmulator) -> None:
    # The spec quirk: a message-level custom_args object does not validate.
    body = {
        "personalizations": [{"to": [{"email": EMAIL}]}],
        "from": {"email": "noreply@herald.example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "hello"}],
        "custom_args": {"herald_delivery_id": "dlv_1"},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.url}/v3/mail/send", json=body, headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}
        ) as response,
    ):
        assert response.status == 400
    assert any("custom_args" in e or "is not of type 'string'" in e for e in emulator.spec_errors)
    emulator.spec_errors.clear()


# Error classification -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error_class", "code"),
    [
        ("rate_limited", TransientDeliveryError, "429"),
        ("server_error", TransientDeliveryError, "500"),
        ("unavailable", TransientDeliveryError, "503"),
        ("unauthorized", ProviderConfigError, "401"),
        ("forbidden", ProviderConfigError, "403"),
        ("unverified_sender", ProviderConfigError, "403"),
        ("not_found", ProviderConfigError, "404"),
        ("bad_request", PermanentDeliveryError, "400"),
        ("too_large", PermanentDeliveryError, "413"),
    ],
)
async def test_documented_errors_are_classified(
    emulator: SendGridEmulator,
    provider: SendGridProvider,
    kind: str,
    error_class: type[DeliveryError],
    code: str,
) -> None:
    emulator.fail_next(kind)
    with pytest.raises(DeliveryError) as info:
        await provider.send(mail())
    assert type(info.value) is error_class
    assert info.value.code == code
    assert info.value.ambiguous is False
    assert (await provider.send(mail())).code == "202"


async def test_429_retry_after_comes_from_x_ratelimit_reset(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    emulator.fail_next("rate_limited", reset_at=NOW + 42)
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(mail())
    assert info.value.code == "429"
    assert info.value.retry_after == pytest.approx(42.0)


@pytest.mark.parametrize("kind", ["unavailable", "server_error"])
async def test_a_5xx_carrying_rate_limit_headers_follows_the_retry_schedule(
    emulator: SendGridEmulator, provider: SendGridProvider, kind: str
) -> None:
    """SendGrid's X-RateLimit-Reset rides on every answer; on a 5xx with quota left it says
    when the rate window ends, not when to retry: no retry_after (the schedule decides)."""
    emulator.fail_next(kind, reset_at=NOW + 60)
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(mail())
    assert emulator.requests[-1].answered in (500, 503)
    assert info.value.retry_after is None
    # Its own Retry-After is still a request from the server, and is honoured.
    emulator.fail_next(kind, reset_at=NOW + 60, retry_after=7)
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(mail())
    assert info.value.retry_after == pytest.approx(7.0)
    # Quota exhausted (Remaining 0): the reset is when sending can resume, whatever the status.
    emulator.fail_next(kind, reset_at=NOW + 60, remaining=0)
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(mail())
    assert info.value.retry_after == pytest.approx(60.0)


async def test_a_failover_chain_does_not_pause_sendgrid_for_a_503(emulator: SendGridEmulator) -> None:
    """Through the composite provider: a 503 with X-RateLimit-Reset a minute away falls over
    to the next provider for this send, and SendGrid is tried again for the next one."""
    from herald.adapters.providers.composite import FailoverProvider
    from herald.testing import RecordingProvider

    sendgrid = SendGridProvider(config_for(emulator), now=lambda: NOW)
    backup = RecordingProvider("backup")
    chain = FailoverProvider([sendgrid, backup])
    try:
        emulator.fail_next("unavailable", reset_at=NOW + 60)
        first = await chain.send(mail(delivery_id="dlv_a"))
        second = await chain.send(mail(delivery_id="dlv_b"))
    finally:
        await sendgrid.close()
    assert [m.delivery_id for m in backup.sent] == ["dlv_a"]
    assert second.code == "202" and first is not None
    assert [r.answered for r in emulator.requests] == [503, 202]


async def test_429_relative_reset_against_the_real_clock(emulator: SendGridEmulator) -> None:
    provider = SendGridProvider(config_for(emulator))
    emulator.fail_next("rate_limited", reset_in=30)
    try:
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(mail())
    finally:
        await provider.close()
    assert info.value.retry_after is not None
    assert 28.0 <= info.value.retry_after <= 31.0


async def test_unverified_sender_is_a_config_error(emulator: SendGridEmulator) -> None:
    provider = SendGridProvider(config_for(emulator, from_email="someone@elsewhere.example"))
    try:
        with pytest.raises(ProviderConfigError) as info:
            await provider.send(mail())
    finally:
        await provider.close()
    assert "verified Sender Identity" in str(info.value)


async def test_connection_dropped_after_the_request_is_ambiguous(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    emulator.fail_next("drop")
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(mail())
    assert info.value.ambiguous is True


async def test_control_endpoint_scripts_faults_out_of_process_style(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{emulator.url}/_emulator/fail", json={"kind": "rate_limited", "reset_at": NOW + 5}
        ) as response:
            assert response.status == 200
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(mail())
        assert info.value.retry_after == pytest.approx(5.0)
        async with session.get(f"{emulator.url}/_emulator/public-key") as response:
            assert (await response.json())["public_key"] == emulator.public_key_b64


def test_classification_table() -> None:
    assert isinstance(classify_sendgrid_error(502, "bad gateway"), TransientDeliveryError)
    assert isinstance(classify_sendgrid_error(405, "method not allowed"), ProviderConfigError)
    assert type(classify_sendgrid_error(422, "unprocessable")) is PermanentDeliveryError
    assert classify_sendgrid_error(429, "slow", retry_after=9).retry_after == 9


def test_config_rejects_unknown_keys_bad_keys_and_hides_the_api_key() -> None:
    with pytest.raises(ValidationError):
        SendGridConfig(api_key="SG.x", from_email="a@example.com", region="eu")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SendGridConfig(api_key="SG.x", from_email="not-an-email")
    with pytest.raises(ValidationError):
        SendGridConfig(api_key="SG.x", from_email="a@example.com", event_webhook_public_key="bm90IGEga2V5")
    cfg = SendGridConfig(api_key="SG.very-secret", from_email="a@example.com")
    assert "SG.very-secret" not in repr(cfg)


# Logs -------------------------------------------------------------------------------------------------


async def test_logs_carry_no_api_key_and_no_whole_address(emulator: SendGridEmulator) -> None:
    api_key = "SG.log-test-key.abcdefghijklmnop"
    emulator.api_key = api_key
    provider = SendGridProvider(config_for(emulator, api_key=api_key))
    emulator.fail_next("server_error")
    emulator.fail_next("bad_request")
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(2):
                with pytest.raises(DeliveryError):
                    await provider.send(mail())
            await provider.send(mail())
    finally:
        await provider.close()
    assert any(entry["event"] == "providers.sendgrid.rejected" for entry in logs)
    text = repr(logs)
    assert api_key not in text
    assert EMAIL not in text


# Event Webhook --------------------------------------------------------------------------------------


async def test_signed_events_verify_and_tampering_is_refused(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    await provider.send(mail())
    payload = emulator.events_for(emulator.sent[0], "delivered")
    signature, timestamp = emulator.sign(payload, str(int(NOW)))  # the provider's clock
    key = emulator.public_key_b64

    assert verify_sendgrid_signature(key, payload, signature, timestamp)
    assert provider.verify_events(payload, signature, timestamp)
    assert not verify_sendgrid_signature(key, payload.replace(b"delivered", b"bounce"), signature, timestamp)
    assert not verify_sendgrid_signature(key, payload, signature, str(int(timestamp) + 1))
    assert not verify_sendgrid_signature(key, payload, "bm90IGEgc2lnbmF0dXJl", timestamp)
    assert not verify_sendgrid_signature(key, payload, "%%%", timestamp)
    assert not verify_sendgrid_signature(key, payload, "", timestamp)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_b64 = base64.b64encode(
        other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    assert not verify_sendgrid_signature(other_b64, payload, signature, timestamp)


def test_signature_accepts_a_pem_key_and_enforces_max_age() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    payload = b'[{"event":"delivered"}]'
    timestamp = str(int(NOW))
    from cryptography.hazmat.primitives import hashes

    signature = base64.b64encode(
        private.sign(timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    ).decode()
    assert verify_sendgrid_signature(pem, payload, signature, timestamp)
    assert verify_sendgrid_signature(pem, payload, signature, timestamp, max_age=300, now=NOW + 10)
    assert not verify_sendgrid_signature(pem, payload, signature, timestamp, max_age=300, now=NOW + 301)
    assert not verify_sendgrid_signature("not a key", payload, signature, timestamp)


async def test_provider_verifies_with_its_configured_key_and_clock(emulator: SendGridEmulator) -> None:
    provider = SendGridProvider(config_for(emulator, event_webhook_max_age=300), now=lambda: NOW)
    payload = b'[{"event":"open"}]'
    signature, timestamp = emulator.sign(payload, str(int(NOW) - 60))
    assert provider.verify_events(payload, signature, timestamp)
    signature, timestamp = emulator.sign(payload, str(int(NOW) - 600))
    assert not provider.verify_events(payload, signature, timestamp)
    no_key = SendGridProvider(config_for(emulator, event_webhook_public_key=None))
    with pytest.raises(ProviderConfigError):
        no_key.verify_events(payload, signature, timestamp)


async def test_a_batch_signed_a_day_ago_is_refused_by_default(emulator: SendGridEmulator) -> None:
    """No ``event_webhook_max_age`` configured: a 300 s replay window all the same."""
    config = config_for(emulator)
    assert config.event_webhook_max_age == 300
    provider = SendGridProvider(config, now=lambda: NOW)
    payload = b'[{"event":"bounce","email":"ada.lovelace@example.com"}]'
    ages = ((0, True), (299, True), (-299, True), (301, False), (86_400, False), (-3600, False))
    for age, accepted in ages:
        signature, timestamp = emulator.sign(payload, str(int(NOW) - age))
        assert provider.verify_events(payload, signature, timestamp) is accepted, age
    with pytest.raises(ValidationError):
        config_for(emulator, event_webhook_max_age=0)


async def test_events_parse_with_delivery_id_and_message_id(
    emulator: SendGridEmulator, provider: SendGridProvider
) -> None:
    receipt = await provider.send(mail(delivery_id="dlv_evt"))
    payload = emulator.events_for(
        emulator.sent[0],
        "processed",
        "delivered",
        "open",
        "click",
        "deferred",
        "bounce",
        "spamreport",
        "unsubscribe",
    )

    events = parse_sendgrid_events(payload)

    assert [e.status for e in events] == [
        "delivered",
        "opened",
        "clicked",
        "bounced",
        "unsubscribed",
        "unsubscribed",
    ]
    raw = json.loads(payload)
    for event in events:
        assert event.provider == "sendgrid"
        assert event.delivery_id == "dlv_evt"
        assert event.provider_message_id == receipt.provider_message_id
        assert event.address == EMAIL
        assert event.at is not None
    assert [e.event_id for e in events] == [
        r["sg_event_id"] for r in raw if r["event"] not in ("processed", "deferred")
    ]
    bounce = events[3]
    assert bounce.code == "5.1.1"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"event": "bounce", "type": "bounce"}, "bounced"),
        ({"event": "bounce", "type": "blocked"}, "failed"),
        ({"event": "dropped", "reason": "Bounced Address"}, "bounced"),
        ({"event": "dropped", "reason": "Invalid"}, "bounced"),
        ({"event": "dropped", "reason": "Unsubscribed Address"}, "unsubscribed"),
        ({"event": "dropped", "reason": "Spam Reporting Address"}, "unsubscribed"),
        ({"event": "dropped", "reason": "Spam Content (if Spam Checker app enabled)"}, "failed"),
        ({"event": "group_unsubscribe"}, "unsubscribed"),
        ({"event": "deferred"}, None),
        ({"event": "processed"}, None),
    ],
)
def test_event_mapping(event: dict[str, Any], expected: str | None) -> None:
    payload = json.dumps(
        [{"email": EMAIL, "sg_event_id": "e1", "herald_delivery_id": "dlv_1", **event}]
    ).encode()
    events = parse_sendgrid_events(payload)
    assert [e.status for e in events] == ([expected] if expected else [])


def test_malformed_event_bodies_are_refused() -> None:
    with pytest.raises(MalformedRequest):
        parse_sendgrid_events(b"not json")
    with pytest.raises(MalformedRequest):
        parse_sendgrid_events(b'{"event": "delivered"}')
    assert parse_sendgrid_events(b'[1, "x", {"event": "delivered"}]')[0].delivery_id is None
