"""The FCM HTTP v1 provider against the local FCM emulator (OAuth token endpoint + messages:send)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from herald.adapters.providers.fcm import (
    FcmConfig,
    FcmProvider,
    build_fcm_request,
    classify_fcm_error,
    parse_retry_after,
)
from herald.domain.errors import (
    ConfigurationError,
    DeadAddressError,
    DeliveryError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, Priority
from herald.testing import FakeClock
from tests.emulators.fcm import FcmEmulator, load_discovery, validate_send_request

START = 1_800_000_000.0
TOKEN = "fcm-device-token-" + "a" * 140


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def discovery() -> dict[str, Any]:
    return load_discovery()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def emulator(rsa_key: rsa.RSAPrivateKey, discovery: dict[str, Any],
                   clock: FakeClock) -> AsyncIterator[FcmEmulator]:
    emu = FcmEmulator(private_key=rsa_key, discovery=discovery, clock=clock.now, token_expires_in=3600)
    await emu.start()
    yield emu
    await emu.stop()


def make_provider(emulator: FcmEmulator, clock: FakeClock, **overrides: Any) -> FcmProvider:
    cfg: dict[str, Any] = {"service_account": emulator.service_account(), "base_url": emulator.base_url,
                           "timeout": 5.0}
    cfg.update(overrides)
    return FcmProvider(FcmConfig.model_validate(cfg), clock=clock)


@pytest.fixture
async def provider(emulator: FcmEmulator, clock: FakeClock) -> AsyncIterator[FcmProvider]:
    p = make_provider(emulator, clock)
    yield p
    await p.close()


def message(token: str = TOKEN, *, priority: Priority = Priority.HIGH, **content: Any) -> OutboundMessage:
    body: dict[str, Any] = {"title": "Hello", "body": "World"}
    body.update(content)
    return OutboundMessage(
        delivery_id="dlv_1", notification_id="ntf_1", user_id="u1", channel="push", address=token,
        content=body, category="transactional", priority=priority, attempt=1,
    )


# Success ---------------------------------------------------------------------------------------
async def test_send_builds_a_valid_v1_request(provider: FcmProvider, emulator: FcmEmulator,
                                              discovery: dict[str, Any]) -> None:
    msg = message(data={"order": 42, "paid": True, "items": [1, 2], "note": "x"},
                  url="https://example.com/orders/42")
    msg.expires_at = START + 3600
    msg.metadata["collapse_id"] = "order-42"

    receipt = await provider.send(msg)

    assert len(emulator.sent) == 1
    sent = emulator.sent[0]
    assert receipt.provider_message_id == sent.name
    assert sent.name.startswith("projects/herald-test/messages/")
    assert validate_send_request(sent.body, discovery) == []
    m = sent.body["message"]
    assert m["token"] == TOKEN
    assert m["notification"] == {"title": "Hello", "body": "World"}
    assert m["data"] == {"order": "42", "paid": "true", "items": "[1,2]", "note": "x",
                         "url": "https://example.com/orders/42", "herald_delivery_id": "dlv_1"}
    assert m["android"] == {"priority": "HIGH", "ttl": "3600s", "collapseKey": "order-42"}
    assert m["apns"]["headers"] == {"apns-push-type": "alert", "apns-priority": "10",
                                    "apns-expiration": str(int(START + 3600)),
                                    "apns-collapse-id": "order-42"}
    assert m["webpush"] == {"headers": {"Urgency": "high", "TTL": "3600"},
                            "fcmOptions": {"link": "https://example.com/orders/42"}}


async def test_data_only_message_is_a_background_push(provider: FcmProvider, emulator: FcmEmulator) -> None:
    await provider.send(message(title=None, body=None, data={"sync": 1}, priority=Priority.LOW))
    m = emulator.sent[0].body["message"]
    assert "notification" not in m
    assert m["android"]["priority"] == "NORMAL"
    assert m["apns"]["headers"] == {"apns-push-type": "background", "apns-priority": "5"}
    assert m["apns"]["payload"] == {"aps": {"content-available": 1}}


def test_emulator_schema_check_rejects_what_fcm_rejects(discovery: dict[str, Any]) -> None:
    good = {"message": {"token": "t" * 20, "data": {"a": "1"}, "android": {"priority": "HIGH", "ttl": "5s"}}}
    assert validate_send_request(good, discovery) == []
    bad_cases = [
        {"message": {"token": "t" * 20, "data": {"a": 1}}},  # data values must be strings
        {"message": {"token": "t" * 20, "bogus": True}},  # unknown field
        {"message": {"token": "t" * 20, "android": {"priority": "URGENT"}}},  # enum
        {"message": {"token": "t" * 20, "android": {"ttl": 60}}},  # duration is a string
        {"message": {"data": {"a": "1"}}},  # no target
        {"message": {"token": "t" * 20, "topic": "news"}},  # two targets
        {"validateOnly": True},  # message is required
        {"message": {"token": "t" * 20, "data": {"google.x": "1"}}},  # reserved key
    ]
    for body in bad_cases:
        assert validate_send_request(body, discovery), body


# Errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "expected", "retry_after"),
    [
        ("UNREGISTERED", DeadAddressError, None),
        ("INVALID_ARGUMENT", PermanentDeliveryError, None),
        ("QUOTA_EXCEEDED", TransientDeliveryError, 37.0),
        ("UNAVAILABLE", TransientDeliveryError, 5.0),
        ("INTERNAL", TransientDeliveryError, None),
        ("SENDER_ID_MISMATCH", ProviderConfigError, None),
        ("THIRD_PARTY_AUTH_ERROR", ProviderConfigError, None),
    ],
)
async def test_documented_errors_are_classified(provider: FcmProvider, emulator: FcmEmulator, code: str,
                                                expected: type[DeliveryError],
                                                retry_after: float | None) -> None:
    emulator.fail_next(code, retry_after=int(retry_after) if retry_after else None)
    with pytest.raises(expected) as info:
        await provider.send(message())
    assert type(info.value) is expected
    assert info.value.code == code
    assert info.value.retry_after == retry_after
    assert emulator.token_requests == 1  # none of these asks for a new access token


async def test_malformed_token_is_a_dead_address(provider: FcmProvider, emulator: FcmEmulator) -> None:
    with pytest.raises(DeadAddressError) as info:
        await provider.send(message("not a token!"))
    assert info.value.code == "INVALID_ARGUMENT"


async def test_invalid_payload_is_permanent_not_the_tokens_fault(provider: FcmProvider,
                                                                 emulator: FcmEmulator) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(message(data={"from": "me"}))
    assert type(info.value) is PermanentDeliveryError
    assert info.value.code == "INVALID_ARGUMENT"
    assert emulator.rejected[-1]["status"] == 400


async def test_wrong_project_is_a_configuration_error(emulator: FcmEmulator, clock: FakeClock) -> None:
    provider = make_provider(emulator, clock, project_id="someone-else")
    try:
        with pytest.raises(ProviderConfigError) as info:
            await provider.send(message())
        assert info.value.code == "PERMISSION_DENIED"
    finally:
        await provider.close()


async def test_rejected_service_account_is_a_configuration_error(emulator: FcmEmulator,
                                                                 clock: FakeClock) -> None:
    account = emulator.service_account()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account["private_key"] = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    provider = make_provider(emulator, clock, service_account=account)
    try:
        with pytest.raises(ProviderConfigError) as info:
            await provider.send(message())
        assert info.value.code == "invalid_grant"
        assert "Signature" in info.value.detail
        assert emulator.sent == []
    finally:
        await provider.close()


# Access tokens ---------------------------------------------------------------------------------
async def test_access_token_is_cached(provider: FcmProvider, emulator: FcmEmulator) -> None:
    await asyncio.gather(*(provider.send(message()) for _ in range(20)))
    for _ in range(5):
        await provider.send(message())
    assert emulator.token_requests == 1
    assert len({s.access_token for s in emulator.sent}) == 1


async def test_expiring_token_is_refreshed_exactly_once(emulator: FcmEmulator, clock: FakeClock) -> None:
    emulator.token_expires_in = 900  # refresh margin 300 s: due after 600 s
    provider = make_provider(emulator, clock, token_refresh_margin=300)
    try:
        await provider.send(message())
        clock.advance(599)
        await provider.send(message())
        assert emulator.token_requests == 1
        clock.advance(2)  # inside the margin: the next sends need one new token between them
        await asyncio.gather(*(provider.send(message()) for _ in range(50)))
        assert emulator.token_requests == 2
        assert provider.token_refreshes == 2
        tokens = [s.access_token for s in emulator.sent]
        assert tokens[0] == tokens[1] != tokens[2]
        assert set(tokens[2:]) == {tokens[2]}
        clock.advance(400)  # past the first token's real expiry: the new one is still good
        await provider.send(message())
        assert emulator.token_requests == 2
        assert not any(r["status"] == 401 for r in emulator.rejected)
    finally:
        await provider.close()


async def test_401_refreshes_once_and_retries(provider: FcmProvider, emulator: FcmEmulator) -> None:
    await provider.send(message())
    emulator.revoke_tokens()  # the cached token is still "fresh" for the provider, dead for FCM
    results = await asyncio.gather(*(provider.send(message()) for _ in range(10)))
    assert all(r.provider_message_id for r in results)
    assert emulator.token_requests == 2
    assert sum(1 for r in emulator.rejected if r["status"] == 401) == 10
    assert len(emulator.sent) == 11


async def test_401_that_survives_a_refresh_is_a_configuration_error(provider: FcmProvider,
                                                                   emulator: FcmEmulator) -> None:
    emulator.fail_next("UNAUTHENTICATED", count=2)
    with pytest.raises(ProviderConfigError) as info:
        await provider.send(message())
    assert info.value.code == "UNAUTHENTICATED"
    assert emulator.token_requests == 2  # one refresh, not a loop
    assert emulator.sent == []


# The emulator's control endpoint ---------------------------------------------------------------
async def test_control_endpoint_injects_errors(provider: FcmProvider, emulator: FcmEmulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{emulator.base_url}/_emulator/fail",
                             json={"code": "QUOTA_EXCEEDED", "count": 2, "retry_after": 9}) as resp:
            assert resp.status == 200
        for _ in range(2):
            with pytest.raises(TransientDeliveryError) as info:
                await provider.send(message())
            assert info.value.retry_after == 9.0
        await provider.send(message())
        async with http.get(f"{emulator.base_url}/_emulator/stats") as resp:
            stats = await resp.json()
    assert stats["sent"] == 1
    assert stats["rejected"] == 2
    assert stats["token_requests"] == 1


# Logs and configuration ---------------------------------------------------------------------------
async def test_logs_never_hold_a_whole_token_or_secret(emulator: FcmEmulator, clock: FakeClock) -> None:
    emulator.token_expires_in = 600
    provider = make_provider(emulator, clock, token_refresh_margin=300)
    try:
        with structlog.testing.capture_logs() as logs:
            await provider.send(message())
            emulator.unregister(TOKEN)
            with pytest.raises(DeadAddressError):
                await provider.send(message())
            emulator.revoke_tokens()
            await provider.send(message("other-token-" + "b" * 140))
            clock.advance(1000)
            emulator.fail_next("QUOTA_EXCEEDED", retry_after=3)
            with pytest.raises(TransientDeliveryError):
                await provider.send(message("other-token-" + "b" * 140))
    finally:
        await provider.close()
    text = json.dumps(logs, default=str)
    assert logs, "the provider logs its state changes"
    secrets = [TOKEN, "other-token-" + "b" * 140, emulator.service_account()["private_key"],
               *emulator.issued]
    for secret in secrets:
        assert secret not in text
    assert "BEGIN PRIVATE KEY" not in text
    assert "ya29." not in text


def test_config_needs_exactly_one_account_source(emulator: FcmEmulator, tmp_path: Any) -> None:
    with pytest.raises(ValidationError):
        FcmConfig()
    with pytest.raises(ValidationError):
        FcmConfig.model_validate({"service_account": emulator.service_account(), "service_account_file": "x"})
    with pytest.raises(ValidationError):
        FcmConfig.model_validate({"service_account_file": "x.json", "api_key": "nope"})
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(emulator.service_account()))
    provider = FcmProvider(FcmConfig(service_account_file=str(path)))
    assert provider.name == "fcm"
    with pytest.raises(ConfigurationError):
        FcmProvider(FcmConfig(service_account_file=str(tmp_path / "missing.json")))


def test_classification_without_an_fcm_error_code() -> None:
    assert isinstance(classify_fcm_error(503, None, None), TransientDeliveryError)
    assert isinstance(classify_fcm_error(404, {"error": {"status": "NOT_FOUND"}}, None), ProviderConfigError)
    bad_token = {"error": {"status": "INVALID_ARGUMENT", "message": "bad",
                           "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                                        "fieldViolations": [{"field": "message.token"}]}]}}
    assert isinstance(classify_fcm_error(400, bad_token, None), DeadAddressError)
    assert parse_retry_after("120", 0) == 120.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0) == 30.0
    assert parse_retry_after("soon", 0) is None


def test_expired_message_is_sent_with_zero_ttl() -> None:
    msg = message()
    msg.expires_at = START - 10
    body = build_fcm_request(msg, START)
    assert body["message"]["android"]["ttl"] == "0s"
    assert body["message"]["webpush"]["headers"]["TTL"] == "0"
