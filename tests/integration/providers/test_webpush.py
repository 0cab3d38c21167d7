"""The Web Push provider against the local push service emulator, which decrypts every message
with the subscription's private key and verifies the VAPID token like a real push service."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.adapters.providers.webpush import (
    MAX_PLAINTEXT,
    WebPushConfig,
    WebPushProvider,
    b64url,
    build_payload,
    encrypt,
    parse_subscription,
    topic_for,
    vapid_token,
)
from herald.domain.errors import (
    DeadAddressError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, Priority
from tests.emulators.webpush import (
    PushRejected,
    WebPushEmulator,
    b64url_decode,
    decrypt_aes128gcm,
    derive_keys,
    verify_vapid,
)

ROOT = Path(__file__).resolve().parents[3]


def _vapid_key() -> tuple[ec.EllipticCurvePrivateKey, str, str]:
    """A key, its PEM and its raw base64url form."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    raw = b64url(key.private_numbers().private_value.to_bytes(32, "big"))
    return key, pem, raw


@pytest.fixture
async def emulator() -> AsyncIterator[WebPushEmulator]:
    emu = WebPushEmulator()
    await emu.start()
    yield emu
    await emu.stop()


def _config(emulator: WebPushEmulator, key: str, **kw: Any) -> WebPushConfig:
    values: dict[str, Any] = {
        "vapid_private_key": key,
        "vapid_subject": "mailto:ops@herald.example",
        "timeout": 2.0,
        "allowed_hosts": [emulator.base_url.removeprefix("http://")],
    }
    values.update(kw)
    return WebPushConfig(**values)


@pytest.fixture
async def provider(emulator: WebPushEmulator) -> AsyncIterator[WebPushProvider]:
    _, pem, _ = _vapid_key()
    p = WebPushProvider(_config(emulator, pem))
    yield p
    await p.close()


def _message(subscription: dict[str, Any], *, in_metadata: bool = False, **kw: Any) -> OutboundMessage:
    address = json.dumps(subscription)
    values: dict[str, Any] = {
        "delivery_id": "dlv_01hwebpushtest",
        "notification_id": "ntf_01hwebpushtest",
        "user_id": "user-9",
        "channel": "push",
        "address": subscription["endpoint"] if in_metadata else address,
        "content": {
            "title": "Döner is ready",
            "body": "Your order #17 is waiting at the counter",
            "data": {"order": 17},
            "devices": [{"id": "dev_1", "kind": "webpush", "token": address}],
        },
        "category": "transactional",
        "priority": Priority.HIGH,
        "attempt": 1,
    }
    if in_metadata:
        values["metadata"] = {"subscription": subscription}
    values.update(kw)
    return OutboundMessage(**values)


# Delivery ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_metadata", [False, True])
async def test_emulator_decrypts_exactly_the_payload(
    provider: WebPushProvider, emulator: WebPushEmulator, in_metadata: bool
) -> None:
    subscription = emulator.create_subscription()
    message = _message(subscription, in_metadata=in_metadata)
    receipt = await provider.send(message)

    assert receipt.code == "201"
    assert receipt.provider_message_id is not None
    assert receipt.provider_message_id.startswith(emulator.base_url + "/messages/")
    assert len(emulator.received) == 1
    record = emulator.received[0]
    assert record.plaintext == build_payload(message)
    payload = orjson.loads(record.plaintext)
    assert payload == {
        "title": "Döner is ready",
        "body": "Your order #17 is waiting at the counter",
        "data": {"order": 17},
        "herald": {
            "delivery_id": "dlv_01hwebpushtest",
            "notification_id": "ntf_01hwebpushtest",
            "category": "transactional",
        },
    }
    assert "devices" not in payload  # other devices' tokens never travel in a push
    assert record.headers["Content-Encoding"] == "aes128gcm"
    assert record.ttl == 86_400
    assert record.urgency == "high"
    assert record.topic is None
    assert record.claims["aud"] == emulator.base_url
    assert record.claims["sub"] == "mailto:ops@herald.example"
    assert 0 < record.claims["exp"] - time.time() <= 24 * 3600


async def test_raw_base64url_key_and_bound_subscription(emulator: WebPushEmulator) -> None:
    _, _, raw = _vapid_key()
    p = WebPushProvider(_config(emulator, raw))
    try:
        subscription = emulator.create_subscription(application_server_key=p.public_key)
        await p.send(_message(subscription))
    finally:
        await p.close()
    assert len(emulator.received) == 1
    assert emulator.received[0].headers["Authorization"].endswith(f", k={p.public_key}")


async def test_headers_from_expiry_priority_and_collapse_id(
    provider: WebPushProvider, emulator: WebPushEmulator
) -> None:
    subscription = emulator.create_subscription()
    await provider.send(
        _message(
            subscription,
            expires_at=time.time() + 600,
            priority=Priority.LOW,
            metadata={"collapse_id": "order-17"},
        )
    )
    await provider.send(
        _message(
            subscription,
            priority=Priority.NORMAL,
            metadata={
                "collapse_id": "a collapse key that is far too long for a Topic",
                "urgency": "very-low",
            },
        )
    )
    first, second = emulator.received
    assert 590 <= first.ttl <= 600
    assert first.urgency == "low"
    assert first.topic == "order-17"
    assert second.urgency == "very-low"
    assert second.topic == topic_for("a collapse key that is far too long for a Topic")
    assert second.topic is not None and len(second.topic) == 32


async def test_vapid_token_is_reused_per_origin(provider: WebPushProvider, emulator: WebPushEmulator) -> None:
    subscription = emulator.create_subscription()
    await provider.send(_message(subscription))
    await provider.send(_message(emulator.create_subscription()))
    a, b = (r.headers["Authorization"] for r in emulator.received)
    assert a == b


# Outcomes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "retry_after"),
    [
        (404, DeadAddressError, None),
        (410, DeadAddressError, None),
        (413, PermanentDeliveryError, None),
        (400, PermanentDeliveryError, None),
        (429, TransientDeliveryError, 17.0),
        (500, TransientDeliveryError, None),
        (502, TransientDeliveryError, None),
        (503, TransientDeliveryError, 17.0),
        (401, ProviderConfigError, None),
        (403, ProviderConfigError, None),
    ],
)
async def test_injected_failures_are_classified(
    provider: WebPushProvider,
    emulator: WebPushEmulator,
    status: int,
    error: type[Exception],
    retry_after: float | None,
) -> None:
    subscription = emulator.create_subscription()
    emulator.fail_next(status, retry_after="17" if retry_after else None)
    with pytest.raises(error) as info:
        await provider.send(_message(subscription))
    exc = info.value
    assert type(exc) is error
    assert getattr(exc, "code", None) == str(status)
    assert getattr(exc, "retry_after", None) == retry_after
    await provider.send(_message(subscription))  # the failure was for the next request only
    assert len(emulator.received) == 1


async def test_unsubscribed_and_unknown_subscriptions_are_dead(
    provider: WebPushProvider, emulator: WebPushEmulator
) -> None:
    subscription = emulator.create_subscription()
    emulator.unsubscribe(subscription)
    with pytest.raises(DeadAddressError) as gone:
        await provider.send(_message(subscription))
    unknown = dict(subscription, endpoint=emulator.base_url + "/push/never-issued")
    with pytest.raises(DeadAddressError) as missing:
        await provider.send(_message(unknown))
    assert (gone.value.code, missing.value.code) == ("410", "404")


async def test_payload_too_large_fails_before_sending(
    provider: WebPushProvider, emulator: WebPushEmulator
) -> None:
    subscription = emulator.create_subscription()
    message = _message(subscription)
    message.content["body"] = "x" * MAX_PLAINTEXT
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(message)
    assert info.value.code == "payload_too_large"
    assert emulator.received == [] and emulator.rejected == []

    # The largest payload that fits goes through as one 4096-byte body.
    overhead = len(build_payload(message)) - MAX_PLAINTEXT
    message.content["body"] = "x" * (MAX_PLAINTEXT - overhead)
    await provider.send(message)
    assert len(emulator.received[0].plaintext) == MAX_PLAINTEXT


@pytest.mark.parametrize(
    "subscription",
    [
        "not json",
        {"endpoint": "https://push.example/x"},
        {"endpoint": "https://push.example/x", "keys": {"p256dh": "AAAA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}},
        {
            "endpoint": "https://push.example/x",
            "keys": {"p256dh": b64url(b"\x04" + b"\x01" * 64), "auth": "AAAAAAAAAAAAAAAAAAAAAA"},
        },
    ],
)
async def test_malformed_subscription_is_a_dead_address(provider: WebPushProvider, subscription: Any) -> None:
    message = _message({"endpoint": "x"})
    message.address = subscription if isinstance(subscription, str) else json.dumps(subscription)
    with pytest.raises(DeadAddressError) as info:
        await provider.send(message)
    assert info.value.code == "invalid_subscription"


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:{port}/push/x",
        "https://169.254.169.254/push",
        "http://push.example/x",
        "file:///etc/passwd",
    ],
)
async def test_endpoints_go_through_the_ssrf_guard(
    provider: WebPushProvider, emulator: WebPushEmulator, endpoint: str
) -> None:
    subscription = emulator.create_subscription()
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    try:
        target = endpoint.format(port=other.getsockname()[1])
        with structlog.testing.capture_logs() as logs, pytest.raises(PermanentDeliveryError) as info:
            await provider.send(_message(dict(subscription, endpoint=target)))
    finally:
        other.close()
    assert info.value.code == "blocked_address"
    assert [e["event"] for e in logs] == ["webpush.blocked"]
    assert subscription["keys"]["auth"] not in repr(logs)


async def test_logs_hold_no_key_or_whole_subscription(
    provider: WebPushProvider, emulator: WebPushEmulator
) -> None:
    subscription = emulator.create_subscription()
    with structlog.testing.capture_logs() as logs:
        await provider.send(_message(subscription))
        emulator.fail_next(410)
        with pytest.raises(DeadAddressError):
            await provider.send(_message(subscription))
    logged = repr(logs)
    assert subscription["endpoint"] not in logged
    assert subscription["keys"]["p256dh"] not in logged
    assert "Authorization" not in logged and "vapid t=" not in logged


def test_config_validation() -> None:
    _, pem, raw = _vapid_key()
    with pytest.raises(ValueError, match="P-256 private key") as info:
        WebPushConfig(vapid_private_key="definitely-not-a-key", vapid_subject="mailto:a@b.example")
    assert "definitely-not-a-key" not in str(info.value)
    rsa_like = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError, match="P-256 private key"):
        WebPushConfig(vapid_private_key=rsa_like, vapid_subject="mailto:a@b.example")
    with pytest.raises(ValueError, match="mailto"):
        WebPushConfig(vapid_private_key=pem, vapid_subject="ops@herald.example")
    config = WebPushConfig(vapid_private_key=raw, vapid_subject="https://herald.example/contact")
    assert raw not in repr(config)


# The emulator's own checks ---------------------------------------------------------------------


def test_key_derivation_matches_rfc8291_appendix_a() -> None:
    ua_private = ec.derive_private_key(
        int.from_bytes(b64url_decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"), "big"), ec.SECP256R1()
    )
    as_public = b64url_decode(
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
    )
    keys = derive_keys(
        ua_private,
        as_public,
        b64url_decode("BTBZMqHH6r4Tts7J_aSIgg"),
        b64url_decode("DGv6ra1nlYgDCS1FRnbzlw"),
    )
    assert b64url(keys.ecdh_secret) == "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs"
    assert b64url(keys.ikm) == "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg"
    assert b64url(keys.cek) == "oIhVW04MRdy2XN9CiKLxTg"
    assert b64url(keys.nonce).startswith("4h_95klXJ5E")


def test_herald_encryption_round_trips_through_the_emulator_decryption() -> None:
    emu = WebPushEmulator()
    subscription = emu.create_subscription(base_url="https://push.example")
    sub = emu.subscriptions[subscription["endpoint"].rsplit("/", 1)[1]]
    parsed = parse_subscription(_message(subscription))
    body = encrypt(b"When I grow up, I want to be a watermelon", parsed)
    assert int.from_bytes(body[16:20], "big") == 4096 and body[20] == 65
    assert decrypt_aes128gcm(body, sub.private_key, sub.auth) == b"When I grow up, I want to be a watermelon"
    tampered = body[:-1] + bytes([body[-1] ^ 1])
    with pytest.raises(PushRejected):
        decrypt_aes128gcm(tampered, sub.private_key, sub.auth)
    with pytest.raises(PushRejected):  # another subscription's keys cannot read it
        other = emu.subscriptions[emu.create_subscription()["endpoint"].rsplit("/", 1)[1]]
        decrypt_aes128gcm(body, other.private_key, other.auth)


def test_emulator_vapid_checks() -> None:
    key, _, _ = _vapid_key()
    k = b64url(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    now = int(time.time())
    aud = "https://push.example"

    def header(token: str, key_b64: str = k) -> str:
        return f"vapid t={token}, k={key_b64}"

    assert (
        verify_vapid(header(vapid_token(key, aud, "mailto:a@b.example", now + 60)), aud, now=now)["aud"]
        == aud
    )
    cases = {
        "wrong aud": header(vapid_token(key, "https://other.example", "mailto:a@b.example", now + 60)),
        "expired": header(vapid_token(key, aud, "mailto:a@b.example", now - 1)),
        "too long": header(vapid_token(key, aud, "mailto:a@b.example", now + 25 * 3600)),
        "bad sub": header(vapid_token(key, aud, "a@b.example", now + 60)),
        "other key": header(
            vapid_token(ec.generate_private_key(ec.SECP256R1()), aud, "mailto:a@b", now + 60)
        ),
        "no scheme": vapid_token(key, aud, "mailto:a@b.example", now + 60),
    }
    for name, value in cases.items():
        with pytest.raises(PushRejected) as info:
            verify_vapid(value, aud, now=now)
        assert info.value.status == 401, name


async def test_emulator_runs_as_a_module() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.emulators.webpush", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.post(f"{base}/_emulator/subscriptions", json={}) as resp:
                        subscription = await resp.json()
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the emulator did not start")
            _, pem, _ = _vapid_key()
            p = WebPushProvider(
                WebPushConfig(
                    vapid_private_key=pem,
                    vapid_subject="mailto:ops@herald.example",
                    allowed_hosts=[f"127.0.0.1:{port}"],
                )
            )
            try:
                message = _message(subscription)
                await p.send(message)
            finally:
                await p.close()
            async with session.get(f"{base}/_emulator/messages") as resp:
                messages = await resp.json()
        assert [m["plaintext"] for m in messages] == [build_payload(message).decode()]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
