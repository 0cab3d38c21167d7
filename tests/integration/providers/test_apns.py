"""The APNs provider against the local APNs emulator (HTTP/2 over TLS, token auth)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from herald.adapters.providers.apns import (
    APNS_PRODUCTION_URL,
    APNS_SANDBOX_URL,
    ApnsConfig,
    ApnsProvider,
    classify_apns_error,
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
from tests.emulators.apns import ApnsEmulator

START = 1_800_000_000.0
DEVICE = "a1b2c3d4" * 8  # 64 hex digits, like a real device token
MINUTE = 60.0
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def team_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def emulator(team_key: ec.EllipticCurvePrivateKey, clock: FakeClock) -> AsyncIterator[ApnsEmulator]:
    emu = ApnsEmulator(private_key=team_key, clock=clock.now)
    await emu.start()
    yield emu
    await emu.stop()


def make_provider(emulator: ApnsEmulator, clock: FakeClock, **overrides: Any) -> ApnsProvider:
    cfg: dict[str, Any] = {
        "team_id": emulator.team_id, "key_id": emulator.key_id, "private_key": emulator.key_pem(),
        "topic": emulator.topic, "base_url": emulator.base_url, "ca_file": emulator.ca_file, "timeout": 5.0,
    }
    cfg.update(overrides)
    return ApnsProvider(ApnsConfig.model_validate(cfg), clock=clock)


@pytest.fixture
async def provider(emulator: ApnsEmulator, clock: FakeClock) -> AsyncIterator[ApnsProvider]:
    p = make_provider(emulator, clock)
    yield p
    await p.close()


def message(token: str = DEVICE, *, priority: Priority = Priority.HIGH, **content: Any) -> OutboundMessage:
    body: dict[str, Any] = {"title": "Hello", "body": "World"}
    body.update(content)
    return OutboundMessage(
        delivery_id="dlv_1", notification_id="ntf_1", user_id="u1", channel="push", address=token,
        content=body, category="transactional", priority=priority, attempt=1,
    )


# Success ---------------------------------------------------------------------------------------
async def test_send_speaks_apns_over_http2(provider: ApnsProvider, emulator: ApnsEmulator) -> None:
    msg = message(data={"order": 42, "tags": ["a"]}, url="https://example.com/o/42")
    msg.expires_at = START + 3600
    msg.metadata["collapse_id"] = "order-42"

    receipt = await provider.send(msg)

    push = emulator.pushes[0]
    assert receipt.provider_message_id == push.apns_id
    assert receipt.code == "200"
    assert push.http_version == "2"
    assert push.device_token == DEVICE
    assert push.headers == {
        "apns-topic": "com.example.herald", "apns-push-type": "alert", "apns-priority": "10",
        "apns-expiration": str(int(START + 3600)), "apns-collapse-id": "order-42",
    }
    assert push.payload == {"aps": {"alert": {"title": "Hello", "body": "World"}, "sound": "default"},
                            "order": 42, "tags": ["a"], "url": "https://example.com/o/42",
                            "herald_delivery_id": "dlv_1"}
    header = jwt.get_unverified_header(push.provider_token)
    assert emulator.private_key is not None
    claims = jwt.decode(push.provider_token, emulator.private_key.public_key(), algorithms=["ES256"],
                        options={"verify_iat": False})
    assert header["alg"] == "ES256"
    assert header["kid"] == emulator.key_id
    assert claims == {"iss": emulator.team_id, "iat": int(START)}


async def test_background_and_low_priority_pushes(provider: ApnsProvider, emulator: ApnsEmulator) -> None:
    await provider.send(message(title=None, body=None, data={"sync": True}))
    await provider.send(message(priority=Priority.NORMAL))
    background, normal = emulator.pushes
    assert background.headers["apns-push-type"] == "background"
    assert background.headers["apns-priority"] == "5"  # Apple rejects 10 for background pushes
    assert background.headers["apns-expiration"] == "0"
    assert background.payload["aps"] == {"content-available": 1}
    assert normal.headers["apns-priority"] == "5"
    assert normal.headers["apns-push-type"] == "alert"


async def test_plaintext_h2c_prior_knowledge(team_key: ec.EllipticCurvePrivateKey,
                                             clock: FakeClock) -> None:
    async with ApnsEmulator(private_key=team_key, clock=clock.now, tls=False) as emu:
        provider = make_provider(emu, clock, ca_file=None)
        try:
            await provider.send(message())
        finally:
            await provider.close()
        assert emu.pushes[0].http_version == "2"


# Errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("BadDeviceToken", DeadAddressError),
        ("Unregistered", DeadAddressError),
        ("BadTopic", ProviderConfigError),
        ("TopicDisallowed", ProviderConfigError),
        ("InvalidProviderToken", ProviderConfigError),
        ("MissingProviderToken", ProviderConfigError),
        ("BadCertificate", ProviderConfigError),
        ("BadCertificateEnvironment", ProviderConfigError),
        ("BadPath", ProviderConfigError),
        ("TooManyRequests", TransientDeliveryError),
        ("TooManyProviderTokenUpdates", TransientDeliveryError),
        ("InternalServerError", TransientDeliveryError),
        ("ServiceUnavailable", TransientDeliveryError),
        ("Shutdown", TransientDeliveryError),
        ("PayloadTooLarge", PermanentDeliveryError),
        ("BadCollapseId", PermanentDeliveryError),
        ("DeviceTokenNotForTopic", PermanentDeliveryError),
    ],
)
async def test_documented_errors_are_classified(provider: ApnsProvider, emulator: ApnsEmulator, reason: str,
                                                expected: type[DeliveryError]) -> None:
    emulator.fail_next(reason)
    with pytest.raises(expected) as info:
        await provider.send(message())
    assert type(info.value) is expected
    assert info.value.code == reason
    assert provider.tokens_minted == 1


async def test_real_checks_of_the_emulator(emulator: ApnsEmulator, clock: FakeClock) -> None:
    provider = make_provider(emulator, clock)
    try:
        with pytest.raises(DeadAddressError) as dead:
            await provider.send(message("not-hex"))
        assert dead.value.code == "BadDeviceToken"
    finally:
        await provider.close()

    wrong_topic = make_provider(emulator, clock, topic="com.example.other")
    other_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    wrong_key = make_provider(emulator, clock, private_key=other_key)
    wrong_kid = make_provider(emulator, clock, key_id="OTHERKEY00")
    wrong_team = make_provider(emulator, clock, team_id="OTHERTEAM0")
    try:
        for p, code in [(wrong_topic, "TopicDisallowed"), (wrong_key, "InvalidProviderToken"),
                        (wrong_kid, "InvalidProviderToken"), (wrong_team, "InvalidProviderToken")]:
            with pytest.raises(ProviderConfigError) as info:
                await p.send(message())
            assert info.value.code == code
    finally:
        for p in (wrong_topic, wrong_key, wrong_kid, wrong_team):
            await p.close()
    assert emulator.pushes == []


# 410 and the registration time ------------------------------------------------------------------
async def test_unregistered_before_registration_deactivates(provider: ApnsProvider,
                                                            emulator: ApnsEmulator) -> None:
    emulator.unregister(DEVICE, at=START - 100)
    msg = message()
    msg.metadata["device_registered_at"] = START - 5000  # registered, then the app was removed
    with pytest.raises(DeadAddressError) as info:
        await provider.send(msg)
    assert info.value.code == "Unregistered"
    assert emulator.rejected[-1] == {"status": 410, "reason": "Unregistered",
                                     "timestamp": int((START - 100) * 1000)}


async def test_unregistered_after_a_newer_registration_keeps_the_token(provider: ApnsProvider,
                                                                       emulator: ApnsEmulator) -> None:
    emulator.unregister(DEVICE, at=START - 100)
    msg = message()
    msg.metadata["device_registered_at"] = START - 50  # the device registered the token again since
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(msg)
    assert not isinstance(info.value, DeadAddressError)
    assert info.value.code == "Unregistered"
    assert "registered this token after APNs invalidated it" in info.value.detail


# Provider tokens ----------------------------------------------------------------------------------
async def test_expired_provider_token_mints_once_and_retries(provider: ApnsProvider,
                                                             emulator: ApnsEmulator) -> None:
    await provider.send(message())
    emulator.fail_next("ExpiredProviderToken", count=5)
    # Five concurrent sends rejected at once share one new token.
    results = await asyncio.gather(*(provider.send(message()) for _ in range(5)))
    assert all(r.provider_message_id for r in results)
    assert provider.tokens_minted == 2
    assert len(emulator.provider_tokens) == 2


async def test_expired_provider_token_twice_is_a_configuration_error(provider: ApnsProvider,
                                                                     emulator: ApnsEmulator) -> None:
    emulator.fail_next("ExpiredProviderToken", count=2)
    with pytest.raises(ProviderConfigError) as info:
        await provider.send(message())
    assert info.value.code == "ExpiredProviderToken"
    assert provider.tokens_minted == 2


async def test_provider_token_lifecycle_over_three_hours(provider: ApnsProvider, emulator: ApnsEmulator,
                                                         clock: FakeClock) -> None:
    end = START + 3 * 3600
    while clock.now() <= end:
        await asyncio.gather(*(provider.send(message()) for _ in range(3)))
        clock.advance(MINUTE)
    # An idle spell longer than a token's life, then more sends.
    clock.advance(75 * MINUTE)
    await provider.send(message())

    assert emulator.rejected == []
    seen = sorted(emulator.provider_tokens.values(), key=lambda s: s.iat)
    assert len(seen) == provider.tokens_minted
    assert 3 * 60 / 60 <= len(seen) - 1 <= 3 * 60 / 20  # refreshed at least hourly, at most every 20 min
    for earlier, later in itertools.pairwise(seen):
        gap = later.iat - earlier.iat
        assert gap >= 20 * MINUTE, "a token was replaced before it was 20 minutes old"
        assert earlier.last_seen - earlier.iat < 60 * MINUTE, "a token was used past its hour"
        assert earlier.last_seen < later.first_seen  # one token at a time, never switched back
    # During the steady minute-by-minute sends each token was replaced between 20 and 60 minutes.
    steady = [b.iat - a.iat for a, b in itertools.pairwise(seen[:-1])]
    assert steady and all(20 * MINUTE <= gap < 60 * MINUTE for gap in steady)
    assert sum(s.uses for s in seen) == len(emulator.pushes)


async def test_a_burst_of_1000_sends_uses_one_http2_connection(
    emulator: ApnsEmulator, clock: FakeClock
) -> None:
    # A generous timeout: on a loaded two-core CI machine 1,000 streams can take seconds.
    provider = make_provider(emulator, clock, timeout=60.0)
    try:
        results = await asyncio.gather(*(provider.send(message()) for _ in range(1000)))
    finally:
        await provider.close()
    assert len({r.provider_message_id for r in results}) == 1000
    assert len(emulator.pushes) == 1000
    assert emulator.connection_count == 1
    assert {p.http_version for p in emulator.pushes} == {"2"}
    assert provider.tokens_minted == 1


# The emulator's control endpoint ---------------------------------------------------------------
async def test_control_endpoint_injects_errors(provider: ApnsProvider, emulator: ApnsEmulator) -> None:
    assert emulator.ca_file is not None
    verify = ssl.create_default_context(cafile=emulator.ca_file)
    async with httpx.AsyncClient(base_url=emulator.base_url, verify=verify) as control:  # HTTP/1.1
        resp = await control.post("/_emulator/fail", json={"reason": "TooManyRequests", "count": 1,
                                                            "retry_after": 7})
        assert resp.status_code == 200
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(message())
        assert info.value.retry_after == 7.0
        await provider.send(message())
        stats = (await control.get("/_emulator/stats")).json()
    assert stats["pushes"] == 1
    assert stats["rejected"] == 1
    assert len(stats["provider_tokens"]) == 1


def test_emulators_run_as_separate_processes(tmp_path: Path) -> None:
    for module, extra in [("tests.emulators.apns", ["--key-file", str(tmp_path / "key.p8"),
                                                     "--ca-out", str(tmp_path / "ca.pem")]),
                          ("tests.emulators.fcm", ["--service-account-out", str(tmp_path / "sa.json")])]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *extra], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            assert f"127.0.0.1:{port}" in banner, proc.stderr.read() if proc.stderr else banner
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    assert "BEGIN PRIVATE KEY" in (tmp_path / "key.p8").read_text()
    assert "BEGIN CERTIFICATE" in (tmp_path / "ca.pem").read_text()
    assert json.loads((tmp_path / "sa.json").read_text())["token_uri"].endswith("/token")


# Logs and configuration ---------------------------------------------------------------------------
async def test_logs_never_hold_a_whole_token_or_key(provider: ApnsProvider, emulator: ApnsEmulator,
                                                    clock: FakeClock) -> None:
    other = "f" * 64
    with structlog.testing.capture_logs() as logs:
        await provider.send(message())
        emulator.fail_next("ExpiredProviderToken")
        await provider.send(message(other))
        emulator.unregister(other)
        with pytest.raises(DeadAddressError):
            await provider.send(message(other))
        clock.advance(50 * MINUTE)
        emulator.fail_next("BadDeviceToken")
        with pytest.raises(DeadAddressError):
            await provider.send(message())
    text = json.dumps(logs, default=str)
    assert any(entry["event"] == "provider.apns.rejected" for entry in logs)
    for secret in [DEVICE, other, emulator.key_pem(), *emulator.provider_tokens]:
        assert secret not in text
    assert "PRIVATE KEY" not in text


def test_config(emulator: ApnsEmulator, tmp_path: Path) -> None:
    base = {"team_id": "T", "key_id": "K", "topic": "com.example.app"}
    with pytest.raises(ValidationError):
        ApnsConfig.model_validate(base)  # no key
    with pytest.raises(ValidationError):
        ApnsConfig.model_validate({**base, "private_key": "x", "private_key_file": "y"})
    with pytest.raises(ValidationError):
        ApnsConfig.model_validate({**base, "private_key": "x", "token_refresh_after": 5 * 60})
    with pytest.raises(ValidationError):
        ApnsConfig.model_validate({**base, "private_key": "x", "certificate": "nope"})
    key_file = tmp_path / "AuthKey_K.p8"
    key_file.write_text(emulator.key_pem())
    cfg = ApnsConfig.model_validate({**base, "private_key_file": str(key_file)})
    assert cfg.url == APNS_PRODUCTION_URL
    assert ApnsConfig.model_validate({**base, "private_key_file": str(key_file), "sandbox": True}).url == (
        APNS_SANDBOX_URL)
    assert ApnsProvider(cfg).name == "apns"
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ConfigurationError):
        ApnsProvider(ApnsConfig.model_validate({**base, "private_key": rsa_pem}))
    with pytest.raises(ConfigurationError):
        ApnsProvider(ApnsConfig.model_validate({**base, "private_key_file": str(tmp_path / "missing.p8")}))


def test_classification_table() -> None:
    assert isinstance(classify_apns_error(410, "Unregistered", timestamp_ms=2000, registered_at=1.0),
                      DeadAddressError)
    kept = classify_apns_error(410, "Unregistered", timestamp_ms=2000, registered_at=2.0)
    assert type(kept) is PermanentDeliveryError
    assert isinstance(classify_apns_error(410, "ExpiredToken"), DeadAddressError)
    assert isinstance(classify_apns_error(503, None), TransientDeliveryError)
    assert isinstance(classify_apns_error(400, "BadPriority"), PermanentDeliveryError)
    assert isinstance(classify_apns_error(403, "SomethingNew"), ProviderConfigError)
