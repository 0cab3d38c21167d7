"""The chat provider, sending through Apprise to real local receivers.

Apprise's generic ``json://`` plugin posts to whatever host the URL names, so a loopback aiohttp
server plays the chat service. Apprise connects with blocking ``requests`` sockets on the
provider's worker threads; the ``loopback_only`` fixture makes any socket connection that is not
to loopback fail, so a guard that let ``10.0.0.1`` through fails the test instead of sending a
packet off the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError

from herald.adapters.providers import chat as chat_module
from herald.adapters.providers.chat import ChatConfig, ChatProvider
from herald.domain.errors import (
    ConfigurationError,
    DeadAddressError,
    PermanentDeliveryError,
    ProviderConfigError,
    TransientDeliveryError,
)
from herald.domain.models import OutboundMessage, Priority


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse, at the socket layer, any outgoing connection that is not to loopback."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def _check(address: Any) -> None:
        if isinstance(address, tuple):
            host = str(address[0]).split("%")[0]
            if not ipaddress.ip_address(host).is_loopback:
                raise ConnectionRefusedError(f"test safety net: refused non-loopback connect to {host}")

    def connect(self: socket.socket, address: Any) -> None:
        _check(address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check(address)
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@dataclass
class Receiver:
    port: int = 0
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, scheme: str = "json") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


async def _start(receiver: Receiver, canary: Receiver | None = None) -> web.AppRunner:
    async def handle(request: web.Request) -> web.StreamResponse:
        receiver.requests.append((request.path, await request.read()))
        path = request.path
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            return web.Response(status=code, text=f"status {code}")
        if path == "/slow":
            # Held until the test releases it (or gives up after a while).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receiver.release.wait(), 5.0)
            return web.Response(status=200, text="late")
        if path == "/redirect" and canary is not None:
            return web.Response(status=302, headers={"Location": canary.url("/stolen", "http")})
        return web.Response(status=200, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server) and server.sockets  # narrowing for the bound socket
    receiver.port = server.sockets[0].getsockname()[1]
    return runner


@pytest.fixture
async def canary() -> AsyncIterator[Receiver]:
    """A loopback listener that is not allow-listed: it must never receive anything."""
    server = Receiver()
    runner = await _start(server)
    yield server
    await runner.cleanup()


@pytest.fixture
async def receiver(canary: Receiver) -> AsyncIterator[Receiver]:
    server = Receiver()
    runner = await _start(server, canary)
    yield server
    server.release.set()
    await runner.cleanup()


def _config(receiver: Receiver, **kw: Any) -> ChatConfig:
    values: dict[str, Any] = {
        "allowed_schemes": ["json", "jsons", "slack", "discord", "mmost"],
        "allowed_hosts": [f"127.0.0.1:{receiver.port}"],
        "timeout": 5.0,
        "connect_timeout": 2.0,
        "read_timeout": 3.0,
        "max_workers": 4,
    }
    values.update(kw)
    return ChatConfig(**values)


@pytest.fixture
async def provider(receiver: Receiver) -> AsyncIterator[ChatProvider]:
    p = ChatProvider(_config(receiver))
    yield p
    await p.close()


def _message(address: str, **kw: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "delivery_id": "dlv_01hchattest",
        "notification_id": "ntf_01hchattest",
        "user_id": "user-42",
        "channel": "chat",
        "address": address,
        "content": {"title": "Deploy", "text": "Build 812 is live"},
        "category": "system",
        "priority": Priority.NORMAL,
        "attempt": 1,
    }
    values.update(kw)
    return OutboundMessage(**values)


# Delivery ------------------------------------------------------------------------------------


async def test_delivers_the_rendered_text(provider: ChatProvider, receiver: Receiver) -> None:
    receipt = await provider.send(_message(receiver.url("/hooks/team")))

    assert receipt.code == "sent"
    assert receipt.detail == "JSON"
    assert len(receiver.requests) == 1
    path, body = receiver.requests[0]
    assert path == "/hooks/team"
    payload = orjson.loads(body)
    assert payload["title"] == "Deploy"
    assert payload["message"] == "Build 812 is live"
    assert payload["type"] == "info"


async def test_body_is_used_when_there_is_no_text(provider: ChatProvider, receiver: Receiver) -> None:
    await provider.send(_message(receiver.url("/hook"), content={"body": "Only a body"}))

    payload = orjson.loads(receiver.requests[0][1])
    assert payload["message"] == "Only a body"
    assert payload["title"] == ""


async def test_a_message_without_text_fails_permanently(provider: ChatProvider, receiver: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(receiver.url("/hook"), content={"title": "nothing else"}))
    assert info.value.code == "empty_message"
    assert receiver.requests == []


# Outcome classification ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_server_errors_are_transient(provider: ChatProvider, receiver: Receiver, status: int) -> None:
    with pytest.raises(TransientDeliveryError) as info:
        await provider.send(_message(receiver.url(f"/status/{status}")))
    assert info.value.code == str(status)
    assert not info.value.ambiguous
    assert len(receiver.requests) == 1  # Apprise made one attempt: herald does the retrying


@pytest.mark.parametrize("status", [404, 400, 401, 403])
async def test_client_errors_are_permanent(provider: ChatProvider, receiver: Receiver, status: int) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(receiver.url(f"/status/{status}")))
    assert type(info.value) is PermanentDeliveryError  # not a dead address
    assert info.value.code == str(status)
    assert f"error={status}" in info.value.detail


async def test_optional_in_the_url_cannot_turn_a_failure_into_success(
    provider: ChatProvider, receiver: Receiver
) -> None:
    with pytest.raises(TransientDeliveryError):
        await provider.send(_message(receiver.url("/status/500?optional=yes&retry=3")))
    assert len(receiver.requests) == 1  # and ?retry= is overridden too


async def test_concurrent_sends_are_classified_each_by_its_own_log(
    provider: ChatProvider, receiver: Receiver
) -> None:
    paths = [f"/status/{500 if i % 3 == 0 else 404 if i % 3 == 1 else 200}" for i in range(18)]
    results = await asyncio.gather(
        *(provider.send(_message(receiver.url(p))) for p in paths), return_exceptions=True
    )
    for path, result in zip(paths, results, strict=True):
        code = path.rsplit("/", 1)[1]
        if code == "200":
            assert not isinstance(result, BaseException), result
        else:
            expected = TransientDeliveryError if code == "500" else PermanentDeliveryError
            assert isinstance(result, expected)
            assert result.code == code
    assert len(receiver.requests) == 18


async def test_failure_details_do_not_carry_the_urls_secrets(
    provider: ChatProvider, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = f"json://herald:S3cretPassw0rd@127.0.0.1:{receiver.port}/status/403?-X-Token=tok_abcdefghijkl"
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(url))
    assert info.value.code == "403"
    for text in (info.value.detail, caplog.text):
        assert "S3cretPassw0rd" not in text
        assert "tok_abcdefghijkl" not in text


# Invalid and refused addresses -------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "json://",  # allowed scheme, no host
        "this is not a url",
        "slack://onlyonetoken",  # a Slack URL needs its three tokens
        "json://127.0.0.1/a json://127.0.0.1/b",  # two URLs in one address
    ],
)
async def test_unparseable_urls_are_dead_addresses(provider: ChatProvider, address: str) -> None:
    with pytest.raises(DeadAddressError) as info:
        await provider.send(_message(address))
    assert info.value.code == "invalid_url"


@pytest.mark.parametrize("scheme", ["form", "xml", "mailto", "apprise", "file"])
async def test_a_scheme_not_allowed_is_blocked(
    provider: ChatProvider, receiver: Receiver, scheme: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(receiver.url("/hook", scheme)))
    assert info.value.code == "blocked_address"
    assert receiver.requests == []


async def test_loopback_that_is_not_allow_listed_is_blocked(provider: ChatProvider, canary: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(canary.url("/hook")))
    assert info.value.code == "blocked_address"
    assert canary.requests == []


@pytest.mark.parametrize(
    ("host", "code"),
    [
        ("localhost", "blocked_address"),
        ("[::1]", "blocked_address"),
        ("10.0.0.1", "blocked_address"),
        ("192.168.1.10", "blocked_address"),
        ("169.254.169.254", "blocked_address"),
        ("100.64.0.1", "blocked_address"),
        ("2130706433", "blocked_address"),
        # Forms Apprise itself refuses to parse: dead addresses, never sent either.
        ("[::ffff:127.0.0.1]", "invalid_url"),
        ("0x7f.1", "invalid_url"),
        ("127.1", "invalid_url"),
    ],
)
async def test_internal_hosts_are_refused(
    provider: ChatProvider, canary: Receiver, host: str, code: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(f"json://{host}:{canary.port}/hook"))
    assert info.value.code == code
    assert canary.requests == []


async def test_self_hosted_chat_schemes_are_checked_too(provider: ChatProvider, canary: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(f"mmost://127.0.0.1:{canary.port}/token12345"))
    assert info.value.code == "blocked_address"
    assert canary.requests == []


async def test_redirects_are_not_followed(
    provider: ChatProvider, receiver: Receiver, canary: Receiver
) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(receiver.url("/redirect?redirect=yes")))
    assert info.value.code == "302"
    assert [p for p, _ in receiver.requests] == ["/redirect"]
    assert canary.requests == []


# Never blocking the event loop -------------------------------------------------------------------


async def test_the_event_loop_keeps_running_while_a_send_is_held(
    provider: ChatProvider, receiver: Receiver
) -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    send = asyncio.create_task(provider.send(_message(receiver.url("/slow"))))
    try:
        while not receiver.requests:  # the receiver is now holding the request
            await asyncio.sleep(0.01)
        held_from = len(ticks)
        await asyncio.sleep(0.5)
        assert not send.done()
        # ~50 expected; a loop blocked by the held send gives 0 or 1 (a loaded machine, fewer)
        assert len(ticks) - held_from >= 5
        receiver.release.set()
        receipt = await send
    finally:
        tick_task.cancel()
    assert receipt.code == "sent"


async def test_sends_beyond_the_pool_wait_and_give_up_unsent(receiver: Receiver) -> None:
    p = ChatProvider(_config(receiver, timeout=0.6, max_workers=1))
    try:
        held = asyncio.create_task(p.send(_message(receiver.url("/slow"))))
        while not receiver.requests:
            await asyncio.sleep(0.01)
        with pytest.raises(TransientDeliveryError) as info:
            await p.send(_message(receiver.url("/second")))
        assert info.value.code == "busy"
        assert not info.value.ambiguous
        with pytest.raises(TransientDeliveryError):
            await held
    finally:
        receiver.release.set()
        await p.close()
    await asyncio.sleep(0.2)
    assert [p for p, _ in receiver.requests] == ["/slow"]  # the queued send never went out


# Configuration ------------------------------------------------------------------------------------


def test_config_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        ChatConfig(allowed_schemes=["json"], surprise=True)  # type: ignore[call-arg]  # the point of the test
    with pytest.raises(ValidationError):
        ChatConfig(allowed_hosts=["127.0.0.1:http"])
    with pytest.raises(ValidationError):
        ChatConfig(allowed_schemes=["not a scheme"])
    with pytest.raises(ValidationError):
        ChatConfig(max_workers=0)


def test_defaults_cover_the_common_chat_services() -> None:
    config = ChatConfig()
    for scheme in ("slack", "discord", "tgram", "workflows", "mmost", "matrix", "rocket", "json", "jsons"):
        assert scheme in config.allowed_schemes
    ChatProvider(config)  # every default scheme exists in the installed Apprise


def test_a_scheme_apprise_does_not_know_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        ChatProvider(ChatConfig(allowed_schemes=["json", "nosuchchat"]))
    assert info.value.field == "chat.allowed_schemes"


async def test_an_allowed_scheme_whose_plugin_cannot_run_is_a_provider_config_error(
    provider: ChatProvider, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apprise.plugins.custom_json import NotifyJSON

    monkeypatch.setattr(NotifyJSON, "enabled", False)
    with pytest.raises(ProviderConfigError) as info:
        await provider.send(_message(receiver.url("/hook")))
    assert info.value.code == "scheme_unavailable"
    assert receiver.requests == []


async def test_close_then_send_again(provider: ChatProvider, receiver: Receiver) -> None:
    await provider.send(_message(receiver.url("/a")))
    await provider.close()
    await provider.send(_message(receiver.url("/b")))
    assert [p for p, _ in receiver.requests] == ["/a", "/b"]


async def test_classification_survives_a_quiet_apprise_logger(
    provider: ChatProvider, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator silencing Apprise must not turn every failure into 'unclassified'."""
    apprise_logger = logging.getLogger("apprise")
    previous = apprise_logger.level
    apprise_logger.setLevel(logging.ERROR)
    try:
        monkeypatch.setattr(chat_module, "_plugins_loaded", threading.Event())  # run the setup again
        ChatProvider(_config(receiver))
        assert apprise_logger.level == logging.WARNING
        with pytest.raises(TransientDeliveryError) as info:
            await provider.send(_message(receiver.url("/status/503")))
        assert info.value.code == "503"
    finally:
        apprise_logger.setLevel(previous)
