"""The Provider contract, once for every provider that has an emulator speaking its protocol.

Whatever the provider, an outcome is classified the same way, because the delivery service
decides retry, failure, deactivation and alerts from the class alone:

* a request that timed out after it was sent is transient and **ambiguous** (the provider may
  have taken it: a resend can duplicate, and herald counts it);
* a refused connection is transient and **not** ambiguous (nothing left the machine);
* 429 with ``Retry-After`` is transient and carries the delay;
* a 5xx is transient;
* a dead address (unregistered token, unreachable number) is a :class:`DeadAddressError`;
* bad credentials are a :class:`ProviderConfigError` (hold the channel, alert ops; never blame
  the user's address).

Provider-specific behaviour (request shapes, signatures, callbacks) stays in
``tests/integration/providers/``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from herald.adapters.providers.apns import ApnsConfig, ApnsProvider
from herald.adapters.providers.fcm import FcmConfig, FcmProvider
from herald.adapters.providers.sendgrid import SendGridConfig, SendGridProvider
from herald.adapters.providers.twilio import TwilioConfig, TwilioProvider
from herald.domain.errors import DeadAddressError, ProviderConfigError, TransientDeliveryError
from herald.domain.models import OutboundMessage, Priority
from herald.ports import Provider
from tests.emulators.apns import ApnsEmulator
from tests.emulators.fcm import FcmEmulator, load_discovery
from tests.emulators.sendgrid import DEFAULT_API_KEY, SendGridEmulator
from tests.emulators.twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioEmulator

START = 1_800_000_000.0
FAULTS = (
    "ok",
    "timeout_after_send",
    "refused",
    "rate_limited",
    "server_error",
    "dead_address",
    "bad_credentials",
)


class Clock:
    def __init__(self) -> None:
        self.t = START

    def now(self) -> float:
        return self.t


@dataclass
class Case:
    """One provider behind its emulator: how to build it and how to make each fault happen."""

    name: str
    channel: str
    address: str
    content: dict[str, Any]
    build: Callable[..., Provider]  # (**config overrides) -> provider
    inject: dict[str, Callable[[], None]]  # fault -> make the emulator answer the next send with it
    base_url_key: str = "base_url"
    unreachable_scheme: str = "http"
    warm_up: bool = False  # send once first (an OAuth token fetch would otherwise absorb a fault)
    stop: Callable[[], Awaitable[None]] | None = None

    def message(self) -> OutboundMessage:
        return OutboundMessage(
            delivery_id="dlv_contract",
            notification_id="ntf_contract",
            user_id="u1",
            channel=self.channel,
            address=self.address,
            content=dict(self.content),
            category="transactional",
            priority=Priority.HIGH,
            attempt=1,
        )


async def _sendgrid() -> Case:
    emu = SendGridEmulator(verified_senders={"noreply@herald.example.com"})
    await emu.start()

    def build(**overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "api_key": DEFAULT_API_KEY,
            "from_email": "noreply@herald.example.com",
            "base_url": emu.url,
            "timeout": 5.0,
        }
        values.update(overrides)
        return SendGridProvider(SendGridConfig(**values), now=time.time)  # the emulator's reset is wall time

    return Case(
        name="sendgrid",
        channel="email",
        address="ada@example.com",
        content={"subject": "Hello", "text": "Hello, Ada."},
        build=build,
        inject={
            "timeout_after_send": lambda: emu.fail_next("timeout", delay=1.0),
            "rate_limited": lambda: emu.fail_next("rate_limited", retry_after=7, reset_in=7),
            "server_error": lambda: emu.fail_next("server_error"),
            "bad_credentials": lambda: emu.fail_next("unauthorized"),
        },
        stop=emu.stop,
    )


async def _twilio() -> Case:
    emu = TwilioEmulator()
    await emu.start()

    def build(**overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "account_sid": DEFAULT_ACCOUNT_SID,
            "auth_token": DEFAULT_AUTH_TOKEN,
            "from_number": "+15017122661",
            "base_url": emu.url,
            "timeout": 5.0,
        }
        values.update(overrides)
        return TwilioProvider(TwilioConfig(**values))

    return Case(
        name="twilio",
        channel="sms",
        address="+33612345678",
        content={"text": "Your code is 482913"},
        build=build,
        inject={
            "timeout_after_send": lambda: emu.fail_next("timeout", delay=1.0),
            "rate_limited": lambda: emu.fail_next("rate_limited", retry_after=7),
            "server_error": lambda: emu.fail_next("server_error"),
            "dead_address": lambda: emu.fail_next("unsubscribed"),
            "bad_credentials": lambda: emu.fail_next("unauthorized"),
        },
        stop=emu.stop,
    )


async def _fcm() -> Case:
    clock = Clock()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    emu = FcmEmulator(private_key=key, discovery=load_discovery(), clock=clock.now, token_expires_in=3600)
    await emu.start()

    def build(**overrides: Any) -> Provider:
        cfg: dict[str, Any] = {
            "service_account": emu.service_account(),
            "base_url": emu.base_url,
            "timeout": 5.0,
        }
        cfg.update(overrides)
        return FcmProvider(FcmConfig.model_validate(cfg), clock=clock)

    return Case(
        name="fcm",
        channel="push",
        address="fcm-device-token-" + "a" * 140,
        content={"title": "Hello", "body": "World"},
        build=build,
        inject={
            "timeout_after_send": lambda: emu.delay_next(1.0),
            "rate_limited": lambda: emu.fail_next("QUOTA_EXCEEDED", retry_after=7),
            "server_error": lambda: emu.fail_next("INTERNAL"),
            "dead_address": lambda: emu.fail_next("UNREGISTERED"),
            "bad_credentials": lambda: emu.fail_next("THIRD_PARTY_AUTH_ERROR"),
        },
        warm_up=True,
        stop=emu.stop,
    )


async def _apns() -> Case:
    clock = Clock()
    emu = ApnsEmulator(private_key=ec.generate_private_key(ec.SECP256R1()), clock=clock.now)
    await emu.start()

    def build(**overrides: Any) -> Provider:
        cfg: dict[str, Any] = {
            "team_id": emu.team_id,
            "key_id": emu.key_id,
            "private_key": emu.key_pem(),
            "topic": emu.topic,
            "base_url": emu.base_url,
            "ca_file": emu.ca_file,
            "timeout": 5.0,
        }
        cfg.update(overrides)
        return ApnsProvider(ApnsConfig.model_validate(cfg), clock=clock)

    return Case(
        name="apns",
        channel="push",
        address="a1b2c3d4" * 8,
        content={"title": "Hello", "body": "World"},
        build=build,
        inject={
            "timeout_after_send": lambda: emu.delay_next(1.0),
            "rate_limited": lambda: emu.fail_next("TooManyRequests", retry_after=7),
            "server_error": lambda: emu.fail_next("InternalServerError"),
            "dead_address": lambda: emu.fail_next("Unregistered"),
            "bad_credentials": lambda: emu.fail_next("InvalidProviderToken"),
        },
        unreachable_scheme="https",
        stop=emu.stop,
    )


CASES = {"sendgrid": _sendgrid, "twilio": _twilio, "fcm": _fcm, "apns": _apns}
# What a provider cannot say at send time, by its protocol: SendGrid says nothing of the mailbox
# when it accepts a message (dead addresses come back later through the signed Event Webhook).
NOT_AT_SEND = {"sendgrid": {"dead_address"}}
PARAMS = [
    pytest.param(name, fault, id=f"{name}-{fault}")
    for name in CASES
    for fault in FAULTS
    if fault not in NOT_AT_SEND.get(name, set())
]


@pytest.fixture
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    made = await CASES[request.param]()
    try:
        yield made
    finally:
        if made.stop is not None:
            await made.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(("case", "fault"), PARAMS, indirect=["case"])
async def test_outcome_is_classified_alike_by_every_provider(case: Case, fault: str) -> None:
    if fault == "refused":
        provider = case.build(**{case.base_url_key: f"{case.unreachable_scheme}://127.0.0.1:{_free_port()}"})
    elif fault == "timeout_after_send":
        provider = case.build(timeout=0.3)
    else:
        provider = case.build()
    try:
        if case.warm_up and fault != "refused":
            await provider.send(case.message())
        if fault == "ok":
            receipt = await provider.send(case.message())
            assert receipt.code
            return
        if fault != "refused":
            case.inject[fault]()
        expected: type[Exception] = {
            "dead_address": DeadAddressError,
            "bad_credentials": ProviderConfigError,
        }.get(fault, TransientDeliveryError)
        with pytest.raises(expected) as info:
            await provider.send(case.message())
        error: Any = info.value
        if fault == "timeout_after_send":
            assert error.ambiguous is True, "the provider may have taken it: a resend can duplicate"
        if fault == "refused":
            assert error.ambiguous is False, "nothing left the machine"
        if fault == "rate_limited":
            assert error.retry_after is not None and 6 <= error.retry_after <= 8, error.retry_after
        if fault in ("server_error", "rate_limited"):
            assert not isinstance(error, DeadAddressError | ProviderConfigError)
    finally:
        await provider.close()
