"""TwilioProvider against the Twilio emulator, which validates every request with Twilio's spec."""

from __future__ import annotations

import email.utils
import time
from base64 import b64encode
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import structlog
from pydantic import ValidationError

from herald.adapters.providers.twilio import (
    TwilioConfig,
    TwilioProvider,
    classify_twilio_error,
    parse_twilio_callback,
    verify_twilio_signature,
)
from herald.domain.errors import (
    DeadAddressError,
    DeliveryError,
    MalformedRequest,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, Priority
from tests.emulators.twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioEmulator

PHONE = "+15558675310"
HERALD_URL = "https://herald.example.com"


@pytest.fixture
async def emulator() -> AsyncIterator[TwilioEmulator]:
    emu = TwilioEmulator()
    await emu.start()
    yield emu
    await emu.stop()
    # Every request herald sent must have matched Twilio's OpenAPI document.
    assert emu.spec_errors == []


def config_for(emulator: TwilioEmulator, **overrides: Any) -> TwilioConfig:
    values: dict[str, Any] = {
        "account_sid": DEFAULT_ACCOUNT_SID,
        "auth_token": DEFAULT_AUTH_TOKEN,
        "from_number": "+15017122661",
        "status_callback_base_url": HERALD_URL,
        "base_url": emulator.url,
        "timeout": 5.0,
    }
    values.update(overrides)
    return TwilioConfig(**values)


@pytest.fixture
async def provider(emulator: TwilioEmulator) -> AsyncIterator[TwilioProvider]:
    p = TwilioProvider(config_for(emulator))
    yield p
    await p.close()


def sms(
    address: str = PHONE, text: str = "Your code is 482913", delivery_id: str = "dlv_01hzx3k9twilio"
) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=delivery_id,
        notification_id="ntf_01hzx3k9",
        user_id="user-1",
        channel="sms",
        address=address,
        content={"text": text},
        category="security",
        priority=Priority.HIGH,
        attempt=1,
    )


# Sending -------------------------------------------------------------------------------------------


async def test_send_is_accepted_and_matches_the_spec(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    receipt = await provider.send(sms())

    assert receipt.code == "201"
    assert receipt.detail == "queued"
    assert receipt.provider_message_id in emulator.messages
    assert receipt.provider_message_id is not None and receipt.provider_message_id.startswith("SM")
    [request] = emulator.requests
    assert request.answered == 201
    assert request.path == f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.form["To"] == PHONE
    assert request.form["From"] == "+15017122661"
    assert request.form["Body"] == "Your code is 482913"
    assert emulator.spec_errors == []


async def test_delivery_id_travels_in_the_status_callback_url(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    await provider.send(sms(delivery_id="dlv_01hzx3k9/with odd&chars"))

    callback = emulator.requests[0].form["StatusCallback"]
    parts = urlsplit(callback)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{HERALD_URL}/v1/webhooks/twilio"
    assert parse_qs(parts.query) == {"delivery_id": ["dlv_01hzx3k9/with odd&chars"]}


async def test_without_a_public_url_no_status_callback_is_requested(emulator: TwilioEmulator) -> None:
    provider = TwilioProvider(config_for(emulator, status_callback_base_url=None))
    try:
        await provider.send(sms())
    finally:
        await provider.close()
    assert "StatusCallback" not in emulator.requests[0].form


async def test_messaging_service_sends_without_from(emulator: TwilioEmulator) -> None:
    service = "MG" + "a" * 32
    provider = TwilioProvider(config_for(emulator, from_number=None, messaging_service_sid=service))
    try:
        receipt = await provider.send(sms())
    finally:
        await provider.close()
    form = emulator.requests[0].form
    assert form["MessagingServiceSid"] == service
    assert "From" not in form
    assert receipt.detail == "accepted"


async def test_one_kept_alive_connection_serves_consecutive_sends(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    for n in range(3):
        await provider.send(sms(delivery_id=f"dlv_{n}"))
    assert len({r.peer for r in emulator.requests}) == 1


async def test_close_is_idempotent_and_a_closed_provider_reconnects(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    await provider.send(sms())
    await provider.close()
    await provider.close()
    receipt = await provider.send(sms())
    assert receipt.code == "201"


async def test_empty_text_fails_before_calling_twilio(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(sms(text="  "))
    assert info.value.code == "empty_body"
    assert emulator.requests == []


async def test_emulator_rejects_a_request_that_breaks_the_spec(emulator: TwilioEmulator) -> None:
    # A MessagingServiceSid of the wrong shape: the spec's pattern catches it, and so must the emulator.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.url}/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json",
            data={"To": PHONE, "MessagingServiceSid": "MG123", "Body": "hi"},
            headers={
                "Authorization": "Basic "
                + b64encode(f"{DEFAULT_ACCOUNT_SID}:{DEFAULT_AUTH_TOKEN}".encode()).decode()
            },
        ) as response,
    ):
        assert response.status == 400
    assert any("MG123" in e for e in emulator.spec_errors)
    emulator.spec_errors.clear()


# Error classification -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error_class", "code"),
    [
        ("rate_limited", TransientDeliveryError, "20429"),
        ("server_error", TransientDeliveryError, "20500"),
        ("unavailable", TransientDeliveryError, "20503"),
        ("invalid_number", DeadAddressError, "21211"),
        ("unreachable", DeadAddressError, "21612"),
        ("not_mobile", DeadAddressError, "21614"),
        ("unsubscribed", DeadAddressError, "21610"),
        ("unauthorized", ProviderConfigError, "20003"),
        ("unverified", ProviderConfigError, "21608"),
        ("region_not_enabled", ProviderConfigError, "21408"),
        ("bad_request", PermanentDeliveryError, "21602"),
        ("body_too_long", PermanentDeliveryError, "21617"),
    ],
)
async def test_documented_errors_are_classified(
    emulator: TwilioEmulator,
    provider: TwilioProvider,
    kind: str,
    error_class: type[DeliveryError],
    code: str,
) -> None:
    emulator.fail_next(kind)
    with pytest.raises(DeliveryError) as info:
        await provider.send(sms())
    assert type(info.value) is error_class
    assert info.value.code == code
    assert info.value.ambiguous is False
    # The answer was an error; the next send goes through.
    assert (await provider.send(sms())).code == "201"


async def test_429_without_twilio_code_honours_retry_after_date(emulator: TwilioEmulator) -> None:
    now = 1_900_000_000.0
    provider = TwilioProvider(config_for(emulator), now=lambda: now)
    emulator.fail_next(
        "custom",
        status=429,
        message="Too Many Requests",
        retry_after=email.utils.formatdate(now + 30, usegmt=True),
    )
    try:
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(sms())
    finally:
        await provider.close()
    assert info.value.code == "429"
    assert info.value.retry_after == pytest.approx(30.0)


async def test_account_sid_in_path_must_be_the_authenticated_account(emulator: TwilioEmulator) -> None:
    provider = TwilioProvider(config_for(emulator, account_sid="AC" + "f" * 32))
    try:
        with pytest.raises(ProviderConfigError):
            await provider.send(sms())
    finally:
        await provider.close()


async def test_magic_number_of_an_opted_out_recipient_is_a_dead_address(provider: TwilioProvider) -> None:
    with pytest.raises(DeadAddressError) as info:
        await provider.send(sms(address="+15005550004"))
    assert info.value.code == "21610"


async def test_invalid_number_detail_does_not_carry_the_whole_number(provider: TwilioProvider) -> None:
    with pytest.raises(DeadAddressError) as info:
        await provider.send(sms(address="+15005550001"))
    assert info.value.code == "21211"
    assert "+15005550001" not in str(info.value)


async def test_connection_dropped_after_the_request_is_ambiguous(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    emulator.fail_next("drop")
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(sms())
    assert info.value.ambiguous is True


async def test_latency_is_added_to_answers(emulator: TwilioEmulator, provider: TwilioProvider) -> None:
    emulator.set_latency(0.2)
    started = time.perf_counter()
    await provider.send(sms())
    assert time.perf_counter() - started >= 0.2


async def test_control_endpoint_scripts_faults_out_of_process_style(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{emulator.url}/_emulator/fail", json={"kind": "unsubscribed", "count": 2}
        ) as response:
            assert response.status == 200
        for _ in range(2):
            with pytest.raises(DeadAddressError):
                await provider.send(sms())
        assert (await provider.send(sms())).code == "201"
        async with session.get(f"{emulator.url}/_emulator/requests") as response:
            assert [r["answered"] for r in await response.json()] == [400, 400, 201]


def test_classification_table() -> None:
    assert isinstance(classify_twilio_error(502, None, "Bad Gateway"), TransientDeliveryError)
    assert isinstance(classify_twilio_error(401, None, "Unauthorized"), ProviderConfigError)
    assert isinstance(classify_twilio_error(404, 20404, "not found"), ProviderConfigError)
    assert type(classify_twilio_error(400, 21604, "To required")) is PermanentDeliveryError
    assert classify_twilio_error(429, 20429, "slow down", retry_after=3).retry_after == 3


def test_config_requires_a_sender_and_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        TwilioConfig(account_sid=DEFAULT_ACCOUNT_SID, auth_token="t")
    with pytest.raises(ValidationError):
        TwilioConfig(account_sid=DEFAULT_ACCOUNT_SID, auth_token="t", from_number="+1", region="us1")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TwilioConfig(account_sid="AC123", auth_token="t", from_number="+1")
    cfg = TwilioConfig(account_sid=DEFAULT_ACCOUNT_SID, auth_token="s3cret-token", from_number="+1")
    assert "s3cret-token" not in repr(cfg)


# Logs -------------------------------------------------------------------------------------------------


async def test_logs_carry_no_secret_and_no_whole_phone_number(emulator: TwilioEmulator) -> None:
    token = "log-test-token-0123456789abcdef"
    emulator.auth_token = token
    provider = TwilioProvider(config_for(emulator, auth_token=token))
    emulator.fail_next("server_error")
    try:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(TransientDeliveryError):
                await provider.send(
                    sms(address="+15005550001")
                )  # magic number: a 21211 whose message quotes it
            with pytest.raises(DeadAddressError) as info:
                await provider.send(sms(address="+15005550001"))
            await provider.send(sms())
    finally:
        await provider.close()
    assert any(entry["event"] == "providers.twilio.rejected" for entry in logs)
    text = repr(logs) + str(info.value)
    assert token not in text
    assert "+15005550001" not in text
    assert PHONE not in text
    assert DEFAULT_ACCOUNT_SID + ":" not in text


# Status callbacks -----------------------------------------------------------------------------------


def test_signature_matches_twilios_published_test_vector() -> None:
    # The vector from Twilio's helper library tests (token "12345").
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
        "Caller": "+14158675309",
    }
    assert verify_twilio_signature(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345")
    # Signed with the default port spelled out; a proxy may have dropped it.
    assert verify_twilio_signature(url, params, "kvajT1Ptam85bY51eRf/AJRuM3w=", "12345")
    assert not verify_twilio_signature(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "54321")


async def test_status_callback_signature_verifies_and_tampering_is_refused(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    receipt = await provider.send(sms(delivery_id="dlv_cb_1"))
    assert receipt.provider_message_id is not None
    url, params, signature = emulator.status_callback(receipt.provider_message_id, "delivered")

    assert verify_twilio_signature(url, params, signature, DEFAULT_AUTH_TOKEN)
    assert provider.verify_callback(url, params, signature)
    assert not verify_twilio_signature(
        url, {**params, "MessageStatus": "failed"}, signature, DEFAULT_AUTH_TOKEN
    )
    assert not verify_twilio_signature(
        url.replace("dlv_cb_1", "dlv_other"), params, signature, DEFAULT_AUTH_TOKEN
    )
    assert not verify_twilio_signature(url, params, signature, "another-token")
    assert not verify_twilio_signature(url, params, "", DEFAULT_AUTH_TOKEN)
    assert not verify_twilio_signature(url, {**params, "Extra": "1"}, signature, DEFAULT_AUTH_TOKEN)


async def test_status_callback_parses_into_an_event(
    emulator: TwilioEmulator, provider: TwilioProvider
) -> None:
    receipt = await provider.send(sms(delivery_id="dlv_cb_2"))
    assert receipt.provider_message_id is not None
    url, params, _ = emulator.status_callback(receipt.provider_message_id, "delivered")

    event = parse_twilio_callback(params, url=url)

    assert event.provider == "twilio"
    assert event.status == "delivered"
    assert event.delivery_id == "dlv_cb_2"
    assert event.provider_message_id == receipt.provider_message_id
    assert event.event_id == f"{receipt.provider_message_id}:delivered"
    assert event.address == PHONE


@pytest.mark.parametrize(
    ("status", "error_code", "expected"),
    [
        ("delivered", None, "delivered"),
        ("undelivered", "30003", "failed"),
        ("failed", "30007", "failed"),
        ("undelivered", "21610", "bounced"),
        ("failed", "21211", "bounced"),
        ("undelivered", "30006", "bounced"),
        ("sent", None, "sent"),
        ("queued", None, "sent"),
        ("read", None, "opened"),
    ],
)
def test_callback_status_mapping(status: str, error_code: str | None, expected: str) -> None:
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": status, "To": PHONE}
    if error_code:
        params["ErrorCode"] = error_code
    event = parse_twilio_callback(params, url=f"{HERALD_URL}/v1/webhooks/twilio?delivery_id=dlv_9")
    assert event.status == expected
    assert event.code == error_code
    assert event.delivery_id == "dlv_9"
    assert event.event_id == f"{'SM' + '1' * 32}:{status}"


def test_callback_delivery_id_from_merged_params_and_malformed_callbacks() -> None:
    event = parse_twilio_callback({"MessageSid": "SMx", "MessageStatus": "delivered", "delivery_id": "dlv_7"})
    assert event.delivery_id == "dlv_7"
    with pytest.raises(MalformedRequest):
        parse_twilio_callback({"MessageStatus": "delivered"})
