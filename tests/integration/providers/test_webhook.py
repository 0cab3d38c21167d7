"""The webhook provider against real local receivers, and its SSRF guard.

Every connection in this module is confined to loopback by the ``loopback_only`` fixture: if the
guard ever let ``10.0.0.1`` or ``169.254.169.254`` through, the test fails on a refused socket
instead of sending a packet off the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web

from herald.adapters.providers.ssrf import (
    BLOCKED,
    PinnedResolver,
    SsrfGuard,
    is_blocked_ip,
)
from herald.adapters.providers.webhook import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookConfig,
    WebhookProvider,
    build_body,
    verify_signature,
)
from herald.domain.errors import DeadAddressError, PermanentDeliveryError, TransientDeliveryError
from herald.domain.models import OutboundMessage, Priority

SECRET = "whsec-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse, at the socket layer, any connection that is not to loopback."""
    original = asyncio.selector_events.BaseSelectorEventLoop.sock_connect

    async def guarded(self: Any, sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise ConnectionRefusedError(f"test safety net: refused non-loopback connect to {host}")
        await original(self, sock, address)

    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", guarded)


@dataclass
class Server:
    host: str
    port: int
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"


async def _serve(app: web.Application, host: str, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type narrowing for the bound socket
    return runner, server.sockets[0].getsockname()[1]


def _recording_app(server: Server, handler: Any = None) -> web.Application:
    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        server.requests.append((request.path, dict(request.headers), body))
        assert request.transport is not None
        server.peers.append(request.transport.get_extra_info("peername"))
        if handler is not None:
            result: web.StreamResponse = await handler(request)
            return result
        return web.Response(status=200, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


@pytest.fixture
async def canary() -> AsyncIterator[Server]:
    """A listener on loopback that must never receive anything."""
    server = Server("127.0.0.1", 0)
    runner, server.port = await _serve(_recording_app(server), "127.0.0.1")
    yield server
    await runner.cleanup()


@pytest.fixture
async def canary6() -> AsyncIterator[Server | None]:
    server = Server("::1", 0)
    try:
        runner, server.port = await _serve(_recording_app(server), "::1")
    except OSError:
        yield None  # no IPv6 loopback on this machine; the URL is refused all the same
        return
    yield server
    await runner.cleanup()


@pytest.fixture
async def receiver(canary: Server) -> AsyncIterator[Server]:
    server = Server("127.0.0.1", 0)
    statuses: dict[str, tuple[int, dict[str, str]]] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/redirect-canary-307":
            return web.Response(status=307, headers={"Location": canary.url("/stolen")})
        if path == "/redirect-canary-302":
            return web.Response(status=302, headers={"Location": canary.url("/stolen")})
        if path == "/redirect-metadata":
            return web.Response(status=308, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        if path == "/redirect-file":
            return web.Response(status=307, headers={"Location": "file:///etc/passwd"})
        if path == "/redirect-ok":
            return web.Response(status=307, headers={"Location": "/hook"})
        if path == "/moved":
            return web.Response(status=301, headers={"Location": "/hook"})
        if path == "/loop":
            return web.Response(status=307, headers={"Location": "/loop"})
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            headers = {"Retry-After": "30"} if code in (429, 503) else {}
            return web.Response(status=code, text=f"status {code}", headers=headers)
        status, headers = statuses.get(path, (200, {}))
        return web.Response(status=status, text="thanks", headers=headers)

    runner, server.port = await _serve(_recording_app(server, handle), "127.0.0.1")
    yield server
    await runner.cleanup()


def _message(address: str, **kw: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "delivery_id": "dlv_01hwebhooktest",
        "notification_id": "ntf_01hwebhooktest",
        "user_id": "user-42",
        "channel": "webhook",
        "address": address,
        "content": {"title": "Build finished", "body": "All green", "data": {"build": 812}},
        "category": "system",
        "priority": Priority.NORMAL,
        "attempt": 1,
    }
    values.update(kw)
    return OutboundMessage(**values)


@pytest.fixture
async def provider(receiver: Server) -> AsyncIterator[WebhookProvider]:
    p = WebhookProvider(
        WebhookConfig(signing_secret=SECRET, timeout=1.0, allowed_hosts=[f"127.0.0.1:{receiver.port}"])
    )
    yield p
    await p.close()


# Delivery ------------------------------------------------------------------------------------


async def test_delivery_is_signed_and_verifiable(provider: WebhookProvider, receiver: Server) -> None:
    message = _message(receiver.url("/hook"))
    receipt = await provider.send(message)

    assert receipt.code == "200"
    assert len(receiver.requests) == 1
    path, headers, body = receiver.requests[0]
    assert path == "/hook"
    assert body == build_body(message)
    assert orjson.loads(body) == {
        "id": "dlv_01hwebhooktest",
        "notification_id": "ntf_01hwebhooktest",
        "user_id": "user-42",
        "category": "system",
        "content": {"title": "Build finished", "body": "All green", "data": {"build": 812}},
    }
    assert headers["Content-Type"] == "application/json"
    assert headers[DELIVERY_ID_HEADER] == "dlv_01hwebhooktest"
    signature = headers[SIGNATURE_HEADER]
    assert signature.startswith("t=") and ",v1=" in signature
    assert verify_signature(SECRET, signature, body)
    assert not verify_signature("another-secret-0123456789", signature, body)
    assert not verify_signature(SECRET, signature, body + b" ")
    assert not verify_signature(SECRET, signature, body, now=time.time() + 3600)


async def test_secret_rotation_signs_with_the_new_and_the_previous_secrets(receiver: Server) -> None:
    new = "rotated-secret-abcdef0123456789"
    p = WebhookProvider(
        WebhookConfig(
            signing_secret=new,
            previous_signing_secrets=[SECRET],
            timeout=1.0,
            allowed_hosts=[f"127.0.0.1:{receiver.port}"],
        )
    )
    try:
        await p.send(_message(receiver.url("/hook")))
    finally:
        await p.close()
    _, headers, body = receiver.requests[-1]
    signature = headers[SIGNATURE_HEADER]
    assert signature.count(",v1=") == 2
    assert verify_signature(new, signature, body)  # receivers already on the new secret
    assert verify_signature(SECRET, signature, body)  # receivers still on the old one
    assert not verify_signature("never-used-secret-0123456789", signature, body)


async def test_connections_are_kept_alive(provider: WebhookProvider, receiver: Server) -> None:
    for _ in range(3):
        await provider.send(_message(receiver.url("/hook")))
    assert len(set(receiver.peers)) == 1


async def test_307_to_an_allowed_receiver_is_followed(provider: WebhookProvider, receiver: Server) -> None:
    await provider.send(_message(receiver.url("/redirect-ok")))
    assert [r[0] for r in receiver.requests] == ["/redirect-ok", "/hook"]
    _, headers, body = receiver.requests[1]
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)


async def test_redirect_that_changes_the_method_is_permanent(
    provider: WebhookProvider, receiver: Server
) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(receiver.url("/moved")))
    assert info.value.code == "301"
    assert [r[0] for r in receiver.requests] == ["/moved"]


async def test_redirect_loop_stops(provider: WebhookProvider, receiver: Server) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(receiver.url("/loop")))
    assert info.value.code == "too_many_redirects"
    assert len(receiver.requests) == 4  # the first request and three redirects


@pytest.mark.parametrize(
    ("status", "error", "retry_after"),
    [
        (410, DeadAddressError, None),
        (429, TransientDeliveryError, 30.0),
        (503, TransientDeliveryError, 30.0),
        (500, TransientDeliveryError, None),
        (408, TransientDeliveryError, None),
        (400, PermanentDeliveryError, None),
        (404, PermanentDeliveryError, None),
        (401, PermanentDeliveryError, None),
    ],
)
async def test_status_classification(
    provider: WebhookProvider,
    receiver: Server,
    status: int,
    error: type[Exception],
    retry_after: float | None,
) -> None:
    with pytest.raises(error) as info:
        await provider.send(_message(receiver.url(f"/status/{status}")))
    exc = info.value
    assert type(exc) is error
    assert getattr(exc, "code", None) == str(status)
    assert getattr(exc, "retry_after", None) == retry_after
    assert f"status {status}" in str(exc)  # the receiver's answer, cut short, is kept as detail


# The SSRF guard ---------------------------------------------------------------------------------

BLOCKED_URLS = [
    "http://127.0.0.1:{canary}/",
    "http://[::1]:{canary6}/",
    "http://localhost:{canary}/",
    "http://10.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://2130706433:{canary}/",
    "http://017700000001:{canary}/",
    "http://0x7f000001:{canary}/",
    "http://0x7f.1:{canary}/",
    "http://127.1:{canary}/",
    "http://[::ffff:127.0.0.1]:{canary}/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[2002:7f00:1::]:{canary}/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[fe80::1%25lo]:{canary}/",
    "http://0.0.0.0:{canary}/",
    "http://[::]:{canary}/",
    "http://100.64.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://224.0.0.1/",
    "http://[fd00::1]/",
    "file:///etc/passwd",
    "ftp://example.com/hook",
    "gopher://127.0.0.1:{canary}/",
    "unix:///var/run/docker.sock",
    "not a url",
]


@pytest.mark.parametrize("template", BLOCKED_URLS)
async def test_blocked_addresses_are_refused(
    template: str, canary: Server, canary6: Server | None, receiver: Server
) -> None:
    url = template.format(canary=canary.port, canary6=canary6.port if canary6 else canary.port)
    # A receiver on loopback is allowed, but only by its exact authority.
    p = WebhookProvider(WebhookConfig(signing_secret=SECRET, allowed_hosts=[f"127.0.0.1:{receiver.port}"]))
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(PermanentDeliveryError) as info:
            await p.send(_message(url))
    finally:
        await p.close()
    assert info.value.code == BLOCKED
    assert canary.requests == []
    if canary6 is not None:
        assert canary6.requests == []
    assert receiver.requests == []
    assert [e["event"] for e in logs] == ["webhook.blocked"]
    assert SECRET not in repr(logs)


@pytest.mark.parametrize(
    "path", ["/redirect-canary-307", "/redirect-canary-302", "/redirect-metadata", "/redirect-file"]
)
async def test_redirect_to_a_blocked_address_is_refused(
    provider: WebhookProvider, receiver: Server, canary: Server, path: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        await provider.send(_message(receiver.url(path)))
    assert info.value.code == BLOCKED
    assert [r[0] for r in receiver.requests] == [path]
    assert canary.requests == []


async def test_private_addresses_pass_only_when_allowed(canary: Server) -> None:
    url = canary.url("/internal")
    strict = WebhookProvider(WebhookConfig(signing_secret=SECRET))
    lenient = WebhookProvider(WebhookConfig(signing_secret=SECRET, allow_private=True))
    by_network = WebhookProvider(WebhookConfig(signing_secret=SECRET, allowed_networks=["127.0.0.0/8"]))
    try:
        with pytest.raises(PermanentDeliveryError):
            await strict.send(_message(url))
        await lenient.send(_message(url))
        await by_network.send(_message(url))
        with pytest.raises(PermanentDeliveryError) as info:  # schemes are checked even then
            await lenient.send(_message("file:///etc/passwd"))
        assert info.value.code == BLOCKED
    finally:
        for p in (strict, lenient, by_network):
            await p.close()
    assert len(canary.requests) == 2


async def test_connection_uses_the_vetted_address_not_a_second_lookup(receiver: Server) -> None:
    """DNS rebinding: the name resolves to an allowed address when vetted, then to another."""
    answers = ["127.0.0.1", "127.0.0.2"]
    calls: list[str] = []

    async def rebinding_dns(host: str, port: int) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
        calls.append(host)
        addr = answers[min(len(calls) - 1, 1)]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (addr, port))]

    rebound = Server("127.0.0.2", receiver.port)
    runner, _ = await _serve(_recording_app(rebound), "127.0.0.2", receiver.port)
    p = WebhookProvider(
        WebhookConfig(signing_secret=SECRET, allowed_networks=["127.0.0.1/32"]), resolve=rebinding_dns
    )
    try:
        await p.send(_message(f"http://rebind.test:{receiver.port}/hook"))
        with pytest.raises(PermanentDeliveryError) as info:  # the next lookup gives the other address
            await p.send(_message(f"http://rebind.test:{receiver.port}/hook"))
    finally:
        await p.close()
        await runner.cleanup()
    assert info.value.code == BLOCKED
    assert calls == ["rebind.test", "rebind.test"]  # one lookup per send, none by the connector
    assert [r[0] for r in receiver.requests] == ["/hook"]
    assert receiver.requests[0][1]["Host"] == f"rebind.test:{receiver.port}"
    assert rebound.requests == []


async def test_a_name_with_any_internal_address_is_refused() -> None:
    async def mixed_dns(host: str, port: int) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    guard = SsrfGuard(resolve=mixed_dns)
    with pytest.raises(PermanentDeliveryError) as info:
        await guard.vet("https://mixed.example/hook")
    assert info.value.code == BLOCKED


async def test_public_addresses_are_vetted_and_pinned() -> None:
    async def public_dns(host: str, port: int) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700:4700::1111", port, 0, 0))]

    guard = SsrfGuard(resolve=public_dns)
    vetted = await guard.vet("https://hooks.example.com/x")
    assert vetted.addresses == ("2606:4700:4700::1111",)
    assert vetted.port == 443
    pinned = await guard.resolver.resolve("hooks.example.com", 443)
    assert [r["host"] for r in pinned] == ["2606:4700:4700::1111"]
    assert (await guard.vet("http://93.184.216.34:8080/")).addresses == ("93.184.216.34",)


async def test_pinned_resolver_never_resolves_by_itself() -> None:
    resolver = PinnedResolver(max_hosts=2)
    with pytest.raises(OSError):
        await resolver.resolve("localhost", 80)
    resolver.pin("a.example", ("93.184.216.34",))
    resolver.pin("b.example", ("93.184.216.35",))
    resolver.pin("A.example.", ("93.184.216.36",))  # names are case- and root-dot-insensitive
    resolver.pin("c.example", ("93.184.216.37",))  # evicts b, the least recently vetted
    assert [r["host"] for r in await resolver.resolve("a.example", 80)] == ["93.184.216.36"]
    with pytest.raises(OSError):
        await resolver.resolve("b.example", 80)


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.31.255.255", True),
        ("192.168.0.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("224.0.0.251", True),
        ("240.0.0.1", True),
        ("198.18.0.1", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("fec0::1", True),
        ("ff02::1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("2002:a00:1::", True),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", True),  # Teredo whose client is 10.0.0.1
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("2001:db8::1", True),
    ],
)
def test_address_classes(address: str, blocked: bool) -> None:
    assert is_blocked_ip(ipaddress.ip_address(address)) is blocked


def test_config_refuses_a_short_secret() -> None:
    with pytest.raises(ValueError, match="at least 16") as info:
        WebhookConfig(signing_secret="short-secret")
    assert "short-secret" not in str(info.value)
    assert "whsec" not in repr(WebhookConfig(signing_secret=SECRET))


def test_loopback_safety_net_is_installed() -> None:
    # The module's premise: a bug in the guard would hit this refusal, not the network.
    assert asyncio.selector_events.BaseSelectorEventLoop.sock_connect.__name__ == "guarded"
