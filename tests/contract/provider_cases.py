"""Each provider behind its emulator, as the provider contract suite (test_providers.py) drives it.

A :class:`Case` starts the provider's emulator and knows how to make each outcome happen on the
next send: ``build`` makes the provider (with config overrides), ``inject`` scripts the
emulator's next answer, ``refused`` points a provider at a port nobody listens on, and
``misconfigured`` builds the provider with credentials (or a setup) the emulator refuses.
Wherever the emulator checks something for real (an API key, a JWT signature, a VAPID key, a
sender), the case uses the real check rather than a scripted answer.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, ClassVar
from unittest import mock

from apprise.plugins.custom_json import NotifyJSON
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from herald.adapters.providers.apns import ApnsConfig, ApnsProvider
from herald.adapters.providers.chat import ChatConfig, ChatProvider
from herald.adapters.providers.fcm import FcmConfig, FcmProvider
from herald.adapters.providers.sendgrid import SendGridConfig, SendGridProvider
from herald.adapters.providers.ses import SesConfig, SesProvider
from herald.adapters.providers.smtp import SmtpConfig, SmtpProvider
from herald.adapters.providers.twilio import TwilioConfig, TwilioProvider
from herald.adapters.providers.webhook import WebhookConfig, WebhookProvider
from herald.adapters.providers.webpush import WebPushConfig, WebPushProvider
from herald.domain.models import OutboundMessage, Priority
from herald.ports import Provider
from herald.testing import FakeClock
from tests.emulators.apns import ApnsEmulator
from tests.emulators.fcm import FcmEmulator, load_discovery
from tests.emulators.receiver import HttpReceiver
from tests.emulators.sendgrid import DEFAULT_API_KEY, SendGridEmulator
from tests.emulators.ses import SesEmulator
from tests.emulators.twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, TwilioEmulator
from tests.emulators.webpush import WebPushEmulator
from tests.support.net import free_port
from tests.support.smtp import SmtpTestServer

START = 1_800_000_000.0
RETRY_AFTER = 7  # seconds, what every emulator says with its 429
# "timeout after send": the provider's timeout, and how long the emulator holds its answer. The
# same provider then sends the next message within SHORT_TIMEOUT, on a machine with both cores
# busy (a validating emulator answers in a few hundred milliseconds then): hence not shorter.
SHORT_TIMEOUT = 1.0
SLOW = 3 * SHORT_TIMEOUT


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class Case:
    """One provider and its emulator. Subclasses fill in the hooks."""

    name: ClassVar[str]
    channel: ClassVar[str]
    content: ClassVar[dict[str, Any]] = {"title": "Hello", "body": "World"}
    address: str = ""
    warm_up: ClassVar[bool] = False  # send once first (an OAuth token fetch would absorb a fault)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def build(self, **overrides: Any) -> Provider:
        raise NotImplementedError

    def inject(self, outcome: str) -> None:
        """Make the emulator answer the next send with ``outcome``."""
        raise NotImplementedError

    def heal(self) -> None:
        """Undo a lasting fault (most faults are for the next answer only)."""

    def refused(self) -> tuple[Provider, OutboundMessage]:
        """A provider aimed at a loopback port where nothing listens."""
        return self.build(base_url=f"http://127.0.0.1:{free_port()}"), self.message()

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        """A provider whose credentials or setup the emulator refuses."""
        raise NotImplementedError

    def message(self, address: str | None = None) -> OutboundMessage:
        return OutboundMessage(
            delivery_id="dlv_contract",
            notification_id="ntf_contract",
            user_id="u1",
            channel=self.channel,
            address=self.address if address is None else address,
            content=dict(self.content),
            category="transactional",
            priority=Priority.HIGH,
            attempt=1,
        )


class SendGridCase(Case):
    name = "sendgrid"
    channel = "email"
    content = {"subject": "Hello", "text": "Hello, Ada."}
    address = "ada@example.com"

    async def start(self) -> None:
        self.emu = SendGridEmulator(verified_senders={"noreply@herald.example.com"})
        await self.emu.start()

    async def stop(self) -> None:
        await self.emu.stop()
        assert self.emu.spec_errors == []  # every request matched SendGrid's OpenAPI document

    def build(self, **overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "api_key": DEFAULT_API_KEY,
            "from_email": "noreply@herald.example.com",
            "base_url": self.emu.url,
            "timeout": 5.0,
        }
        values.update(overrides)
        return SendGridProvider(SendGridConfig(**values), now=time.time)  # the emulator's reset is wall time

    def inject(self, outcome: str) -> None:
        {
            "timeout_after_send": lambda: self.emu.fail_next("timeout", delay=SLOW),
            "rate_limited": lambda: self.emu.fail_next(
                "rate_limited", retry_after=RETRY_AFTER, reset_in=RETRY_AFTER
            ),
            "server_error": lambda: self.emu.fail_next("server_error"),
        }[outcome]()

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        return self.build(api_key="SG.wrong"), self.message()


class TwilioCase(Case):
    name = "twilio"
    channel = "sms"
    content = {"text": "Your code is 482913"}
    address = "+33612345678"

    async def start(self) -> None:
        self.emu = TwilioEmulator()
        await self.emu.start()

    async def stop(self) -> None:
        await self.emu.stop()
        assert self.emu.spec_errors == []  # every request matched Twilio's OpenAPI document

    def build(self, **overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "account_sid": DEFAULT_ACCOUNT_SID,
            "auth_token": DEFAULT_AUTH_TOKEN,
            "from_number": "+15017122661",
            "base_url": self.emu.url,
            "timeout": 5.0,
        }
        values.update(overrides)
        return TwilioProvider(TwilioConfig(**values))

    def inject(self, outcome: str) -> None:
        {
            "timeout_after_send": lambda: self.emu.fail_next("timeout", delay=SLOW),
            "rate_limited": lambda: self.emu.fail_next("rate_limited", retry_after=RETRY_AFTER),
            "server_error": lambda: self.emu.fail_next("server_error"),
            "dead_address": lambda: self.emu.fail_next("unsubscribed"),
        }[outcome]()

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        return self.build(auth_token="not-the-token"), self.message()


class SesCase(Case):
    name = "ses"
    channel = "email"
    content = {"subject": "Your invoice", "text": "Total: 12 €"}
    address = "ada@example.org"
    ACCESS_KEY = "AKIDHERALDTEST0000"
    SECRET_KEY = "herald/secret/key/for/tests/only/0000"

    async def start(self) -> None:
        self.emu = SesEmulator(credentials={self.ACCESS_KEY: self.SECRET_KEY})
        await self.emu.start()

    async def stop(self) -> None:
        await self.emu.stop()

    def build(self, **overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "region": "us-east-1",
            "access_key_id": self.ACCESS_KEY,
            "secret_access_key": self.SECRET_KEY,
            "endpoint_url": self.emu.url,
            "from_address": "noreply@herald.example",
            "timeout": 5.0,
        }
        values.update(overrides)
        return SesProvider(SesConfig(**values))

    def inject(self, outcome: str) -> None:
        if outcome == "timeout_after_send":
            self.emu.delay = SLOW
        elif outcome == "rate_limited":
            self.emu.fail_next(429, "TooManyRequestsException", **{"Retry-After": str(RETRY_AFTER)})
        elif outcome == "server_error":
            self.emu.fail_next(500, "InternalFailure")
        else:
            raise KeyError(outcome)

    def heal(self) -> None:
        self.emu.delay = 0.0

    def refused(self) -> tuple[Provider, OutboundMessage]:
        return self.build(endpoint_url=f"http://127.0.0.1:{free_port()}"), self.message()

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        return self.build(secret_access_key="not/the/secret/key"), self.message()


class SmtpCase(Case):
    name = "smtp"
    channel = "email"
    content = {"subject": "Hi", "text": "Hello"}
    address = "ada@example.org"
    SENDER = "noreply@herald.test"

    async def start(self) -> None:
        self.server = SmtpTestServer().start()
        self.server.handler.allowed_senders = {self.SENDER}

    async def stop(self) -> None:
        self.server.stop()

    def build(self, **overrides: Any) -> Provider:
        values: dict[str, Any] = {"port": self.server.port, "from_address": self.SENDER, "timeout": 5.0}
        values.update(overrides)
        return SmtpProvider(SmtpConfig(**values))

    def inject(self, outcome: str) -> None:
        handler = self.server.handler
        if outcome == "timeout_after_send":
            handler.delay = SLOW  # at DATA, after the message was taken
        elif outcome == "server_error":
            handler.data_replies.append("451 4.3.0 Mail server temporarily rejected message")
        elif outcome == "dead_address":
            handler.dead_mailboxes.add(self.address)
        else:
            raise KeyError(outcome)

    def heal(self) -> None:
        self.server.handler.delay = 0.0

    def refused(self) -> tuple[Provider, OutboundMessage]:
        return self.build(port=free_port()), self.message()

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        return self.build(from_address="stranger@elsewhere.example"), self.message()


class FcmCase(Case):
    name = "fcm"
    channel = "push"
    address = "fcm-device-token-" + "a" * 140
    warm_up = True

    async def start(self) -> None:
        self.clock = FakeClock(START)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.emu = FcmEmulator(
            private_key=key, discovery=load_discovery(), clock=self.clock.now, token_expires_in=3600
        )
        await self.emu.start()

    async def stop(self) -> None:
        await self.emu.stop()

    def build(self, **overrides: Any) -> Provider:
        cfg: dict[str, Any] = {
            "service_account": self.emu.service_account(),
            "base_url": self.emu.base_url,
            "timeout": 5.0,
        }
        cfg.update(overrides)
        return FcmProvider(FcmConfig.model_validate(cfg), clock=self.clock)

    def inject(self, outcome: str) -> None:
        {
            "timeout_after_send": lambda: self.emu.delay_next(SLOW),
            "rate_limited": lambda: self.emu.fail_next("QUOTA_EXCEEDED", retry_after=RETRY_AFTER),
            "server_error": lambda: self.emu.fail_next("INTERNAL"),
            "dead_address": lambda: self.emu.unregister(self.address),
        }[outcome]()

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        account = self.emu.service_account()  # a key FCM does not know signs the token request
        account["private_key"] = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return self.build(service_account=account), self.message()


class ApnsCase(Case):
    name = "apns"
    channel = "push"
    address = "a1b2c3d4" * 8

    async def start(self) -> None:
        self.clock = FakeClock(START)
        self.emu = ApnsEmulator(private_key=ec.generate_private_key(ec.SECP256R1()), clock=self.clock.now)
        await self.emu.start()

    async def stop(self) -> None:
        await self.emu.stop()

    def build(self, **overrides: Any) -> Provider:
        cfg: dict[str, Any] = {
            "team_id": self.emu.team_id,
            "key_id": self.emu.key_id,
            "private_key": self.emu.key_pem(),
            "topic": self.emu.topic,
            "base_url": self.emu.base_url,
            "ca_file": self.emu.ca_file,
            "timeout": 5.0,
        }
        cfg.update(overrides)
        return ApnsProvider(ApnsConfig.model_validate(cfg), clock=self.clock)

    def inject(self, outcome: str) -> None:
        {
            "timeout_after_send": lambda: self.emu.delay_next(SLOW),
            "rate_limited": lambda: self.emu.fail_next("TooManyRequests", retry_after=RETRY_AFTER),
            "server_error": lambda: self.emu.fail_next("InternalServerError"),
            # No registration time on the message: APNs' word that the token is gone stands.
            "dead_address": lambda: self.emu.unregister(self.address, at=START - 100),
        }[outcome]()

    def refused(self) -> tuple[Provider, OutboundMessage]:
        return self.build(base_url=f"https://127.0.0.1:{free_port()}"), self.message()

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        # Provider tokens signed with a key Apple does not hold for this key id.
        return self.build(private_key=_pem(ec.generate_private_key(ec.SECP256R1()))), self.message()


class WebhookCase(Case):
    name = "webhook"
    channel = "webhook"
    content = {"title": "Build finished", "body": "All green"}

    async def start(self) -> None:
        self.receiver = await HttpReceiver().start()
        self.address = self.receiver.url("/hook")

    async def stop(self) -> None:
        await self.receiver.stop()

    def build(self, **overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "signing_secret": "whsec-test-0123456789abcdef",
            "timeout": 5.0,
            "allowed_hosts": [self.receiver.netloc],
        }
        values.update(overrides)
        return WebhookProvider(WebhookConfig(**values))

    def inject(self, outcome: str) -> None:
        {
            "timeout_after_send": lambda: self.receiver.delay_next(SLOW),
            "rate_limited": lambda: self.receiver.fail_next(429, retry_after=RETRY_AFTER),
            "server_error": lambda: self.receiver.fail_next(500),
            "dead_address": lambda: self.receiver.fail_next(410),
        }[outcome]()

    def refused(self) -> tuple[Provider, OutboundMessage]:
        port = free_port()
        return self.build(allowed_hosts=[f"127.0.0.1:{port}"]), self.message(f"http://127.0.0.1:{port}/hook")


class ChatCase(Case):
    name = "chat"
    channel = "chat"
    content = {"title": "Deploy", "text": "Build 812 is live"}

    async def start(self) -> None:
        self.receiver = await HttpReceiver().start()
        self.address = self.receiver.url("/hooks/team", scheme="json")  # Apprise's generic JSON plugin
        self.patches = contextlib.ExitStack()

    async def stop(self) -> None:
        self.patches.close()
        await self.receiver.stop()

    def build(self, **overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "allowed_schemes": ["json"],
            "allowed_hosts": [self.receiver.netloc],
            "timeout": 5.0,
            "connect_timeout": 2.0,
            "read_timeout": 3.0,  # above the short send timeout: herald's own deadline is what ends it
            "max_workers": 2,
        }
        values.update(overrides)
        return ChatProvider(ChatConfig(**values))

    def inject(self, outcome: str) -> None:
        {
            "timeout_after_send": lambda: self.receiver.delay_next(SLOW),
            "rate_limited": lambda: self.receiver.fail_next(429, retry_after=RETRY_AFTER),
            "server_error": lambda: self.receiver.fail_next(503),
            "dead_address": lambda: self.receiver.fail_next(410),
        }[outcome]()

    def refused(self) -> tuple[Provider, OutboundMessage]:
        port = free_port()
        return self.build(allowed_hosts=[f"127.0.0.1:{port}"]), self.message(f"json://127.0.0.1:{port}/hook")

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        # A scheme the configuration allows whose Apprise plugin cannot run on this installation
        # (a missing optional dependency): herald's setup, not the user's URL.
        self.patches.enter_context(mock.patch.object(NotifyJSON, "enabled", False))
        return self.build(), self.message()


class WebPushCase(Case):
    name = "webpush"
    channel = "push"
    content = {"title": "Döner is ready", "body": "Your order #17 is waiting"}

    async def start(self) -> None:
        self.emu = WebPushEmulator()
        await self.emu.start()
        self.vapid = _pem(ec.generate_private_key(ec.SECP256R1()))
        self.subscription = self.emu.create_subscription()
        self.address = json.dumps(self.subscription)

    async def stop(self) -> None:
        await self.emu.stop()

    def build(self, **overrides: Any) -> Provider:
        values: dict[str, Any] = {
            "vapid_private_key": self.vapid,
            "vapid_subject": "mailto:ops@herald.example",
            "timeout": 5.0,
            "allowed_hosts": [self.emu.base_url.removeprefix("http://")],
        }
        values.update(overrides)
        return WebPushProvider(WebPushConfig(**values))

    def inject(self, outcome: str) -> None:
        {
            "timeout_after_send": lambda: self.emu.delay_next(SLOW),
            "rate_limited": lambda: self.emu.fail_next(429, retry_after=str(RETRY_AFTER)),
            "server_error": lambda: self.emu.fail_next(500),
            "dead_address": lambda: self.emu.unsubscribe(self.subscription),
        }[outcome]()

    def refused(self) -> tuple[Provider, OutboundMessage]:
        port = free_port()
        dead = dict(self.subscription, endpoint=f"http://127.0.0.1:{port}/push/x")
        return self.build(allowed_hosts=[f"127.0.0.1:{port}"]), self.message(json.dumps(dead))

    def misconfigured(self) -> tuple[Provider, OutboundMessage]:
        # The browser subscribed with another application server key than the one herald signs
        # with: the push service refuses herald's VAPID credentials for it.
        other = WebPushProvider(
            WebPushConfig(
                vapid_private_key=_pem(ec.generate_private_key(ec.SECP256R1())),
                vapid_subject="mailto:ops@herald.example",
            )
        ).public_key
        bound = self.emu.create_subscription(application_server_key=other)
        return self.build(), self.message(json.dumps(bound))


CASES: dict[str, type[Case]] = {
    case.name: case
    for case in (
        SendGridCase,
        SesCase,
        SmtpCase,
        TwilioCase,
        FcmCase,
        ApnsCase,
        WebhookCase,
        ChatCase,
        WebPushCase,
    )
}
