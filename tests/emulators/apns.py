"""A local APNs emulator: HTTP/2 over TLS (hypercorn serving an ASGI app), token auth.

It checks a push the way APNs does and answers in APNs' shapes (``{"reason": ...}``, plus
``timestamp`` in milliseconds on 410):

* the provider token: ES256, ``kid`` = the key id, ``iss`` = the team id, signature by the team's
  key, ``iat`` not in the future (``InvalidProviderToken``) and at most an hour old by the
  emulator's clock (``ExpiredProviderToken``); a missing token is ``MissingProviderToken``;
* the headers: ``apns-topic`` (``MissingTopic``/``TopicDisallowed``), ``apns-push-type``,
  ``apns-priority`` (10 only for alerts), ``apns-expiration``, ``apns-collapse-id`` (64 bytes),
  ``apns-id`` (a UUID), no duplicates;
* the device token (hex) and the payload (a JSON object with ``aps``, at most 4 KB);
* success: 200 with an ``apns-id`` header.

It records every push, every distinct provider token (its ``iat`` and when it was first and last
seen) and counts TCP connections (one per distinct client address). Tests drive it in-process
(``fail_next``, ``unregister``, the ``clock``); other processes use ``/_emulator/...``. Run it
alone with ``python -m tests.emulators.apns --port 8443 --key-out key.p8 --ca-out ca.pem``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# reason -> HTTP status, as Apple documents them.
REASONS: dict[str, int] = {
    "BadCollapseId": 400, "BadDeviceToken": 400, "BadExpirationDate": 400, "BadMessageId": 400,
    "BadPriority": 400, "BadTopic": 400, "DeviceTokenNotForTopic": 400, "DuplicateHeaders": 400,
    "IdleTimeout": 400, "InvalidPushType": 400, "MissingDeviceToken": 400, "MissingTopic": 400,
    "PayloadEmpty": 400, "TopicDisallowed": 400,
    "BadCertificate": 403, "BadCertificateEnvironment": 403, "ExpiredProviderToken": 403,
    "Forbidden": 403, "InvalidProviderToken": 403, "MissingProviderToken": 403,
    "UnrelatedKeyIdInToken": 403,
    "BadPath": 404, "MethodNotAllowed": 405, "ExpiredToken": 410, "Unregistered": 410,
    "PayloadTooLarge": 413, "TooManyProviderTokenUpdates": 429, "TooManyRequests": 429,
    "InternalServerError": 500, "ServiceUnavailable": 503, "Shutdown": 503,
}
PUSH_TYPES = {"alert", "background", "location", "voip", "complication", "fileprovider", "mdm",
              "liveactivity", "pushtotalk", "widgets", "controls"}
MAX_PAYLOAD = 4096
TOKEN_LIFETIME = 3600
_HEX_TOKEN = re.compile(r"^[0-9a-fA-F]{64,200}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(slots=True)
class InjectedError:
    status: int
    reason: str
    retry_after: str | None = None
    timestamp_ms: int | None = None
    delay: float = 0.0


@dataclass(slots=True)
class RecordedPush:
    device_token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    apns_id: str
    provider_token: str
    http_version: str
    client: tuple[str, int] | None


@dataclass(slots=True)
class ProviderTokenSeen:
    iat: int
    first_seen: float  # emulator clock
    last_seen: float
    uses: int = 0


@dataclass
class ApnsEmulator:
    team_id: str = "TEAM123456"
    key_id: str = "KEY1234567"
    topic: str = "com.example.herald"
    clock: Callable[[], float] = time.time
    private_key: ec.EllipticCurvePrivateKey | None = None
    tls: bool = True
    max_concurrent_streams: int = 1000

    pushes: list[RecordedPush] = field(default_factory=list, init=False)
    rejected: list[dict[str, Any]] = field(default_factory=list, init=False)
    provider_tokens: dict[str, ProviderTokenSeen] = field(default_factory=dict, init=False)
    clients: set[tuple[str, int]] = field(default_factory=set, init=False)
    unregistered: dict[str, int] = field(default_factory=dict, init=False)  # token -> timestamp ms
    base_url: str = field(default="", init=False)
    ca_file: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.private_key is None:
            self.private_key = ec.generate_private_key(ec.SECP256R1())
        self._public = self.private_key.public_key()
        self._verified: dict[str, dict[str, Any]] = {}  # provider token -> claims (signature checked)
        self._script: deque[InjectedError] = deque()
        self._offset = 0.0
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._started = asyncio.Event()

    # What tests and the control endpoint use ---------------------------------------------------
    def now(self) -> float:
        return self.clock() + self._offset

    @property
    def connection_count(self) -> int:
        return len(self.clients)

    def key_pem(self) -> str:
        """The team's key as an Apple ``.p8`` file holds it (PKCS#8 PEM)."""
        assert self.private_key is not None
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def fail_next(self, reason: str, count: int = 1, *, status: int | None = None,
                  retry_after: float | str | None = None, timestamp_ms: int | None = None,
                  delay: float = 0.0) -> None:
        """Answer the next ``count`` authenticated pushes with ``reason`` (status from REASONS)."""
        code = status if status is not None else REASONS[reason]
        if code == 410 and timestamp_ms is None:
            timestamp_ms = int(self.now() * 1000)
        ra = None if retry_after is None else str(retry_after)
        for _ in range(count):
            self._script.append(InjectedError(code, reason, ra, timestamp_ms, delay))

    def delay_next(self, seconds: float, count: int = 1) -> None:
        for _ in range(count):
            self._script.append(InjectedError(200, "", None, None, seconds))

    def unregister(self, device_token: str, at: float | None = None) -> None:
        """The app was removed from the device at ``at`` (emulator clock when omitted)."""
        self.unregistered[device_token] = int((self.now() if at is None else at) * 1000)

    def reset(self) -> None:
        self.pushes.clear()
        self.rejected.clear()
        self.provider_tokens.clear()
        self.clients.clear()
        self.unregistered.clear()
        self._script.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "connections": self.connection_count,
            "pushes": len(self.pushes),
            "rejected": len(self.rejected),
            "provider_tokens": [asdict(seen) for seen in self.provider_tokens.values()],
            "now": self.now(),
        }

    # Server ----------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        config = Config()
        config.errorlog = None
        config.accesslog = None
        config.graceful_timeout = 1.0
        config.h2_max_concurrent_streams = self.max_concurrent_streams
        config.keep_alive_timeout = 3600.0  # APNs keeps idle connections for a long while
        config.keep_alive_max_requests = 2**62
        # With proto given, asyncio sets TCP_NODELAY on accepted sockets (else Nagle adds ~40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        if self.tls:
            ca = trustme.CA()
            cert = ca.issue_cert(host, "localhost")
            self._tmp = tempfile.TemporaryDirectory(prefix="apns-emulator-")
            folder = Path(self._tmp.name)
            cert.private_key_pem.write_to_path(str(folder / "server.key"))
            cert.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
            ca.cert_pem.write_to_path(str(folder / "ca.pem"))
            config.certfile, config.keyfile = str(folder / "server.pem"), str(folder / "server.key")
            self.ca_file = str(folder / "ca.pem")
            sockets = Sockets(secure_sockets=[sock], insecure_sockets=[], quic_sockets=[])
        else:
            sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
        self.base_url = f"{'https' if self.tls else 'http'}://{host}:{bound}"
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._task = asyncio.create_task(worker_serve(wrap_app(self, 0, "asgi"), config, sockets=sockets,
                                                      shutdown_trigger=self._stop.wait))
        # The socket already listens; wait for the app's startup (or the server's failure).
        waiter = asyncio.ensure_future(self._started.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()
        return self.base_url

    async def stop(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await self._task
            self._task = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> ApnsEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ASGI ------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    self._started.set()
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("client"):
            self.clients.add(tuple(scope["client"]))
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        path: str = scope["path"]
        if path.startswith("/_emulator/"):
            status, payload = self._control(scope["method"], path, body)
            await _respond(send, status, json.dumps(payload).encode(), {"content-type": "application/json"})
            return
        if scope["method"] != "POST":
            await self._error(send, 405, "MethodNotAllowed")
            return
        if not path.startswith("/3/device"):
            await self._error(send, 404, "BadPath")
            return
        await self._push(scope, path, body, send)

    async def _push(self, scope: Scope, path: str, body: bytes, send: Send) -> None:
        if scope.get("http_version") != "2":
            await _respond(send, 505, b"APNs speaks HTTP/2 only", {})
            return
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        names = [k.decode("latin-1").lower() for k, _ in raw_headers]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        apns_names = [n for n in names if n.startswith("apns-") or n == "authorization"]
        if len(apns_names) != len(set(apns_names)):
            await self._error(send, 400, "DuplicateHeaders")
            return

        # Authentication first, as APNs does.
        auth = headers.get("authorization", "")
        if not auth:
            await self._error(send, 403, "MissingProviderToken")
            return
        scheme, _, provider_token = auth.partition(" ")
        if scheme.lower() != "bearer" or not provider_token:
            await self._error(send, 403, "InvalidProviderToken")
            return
        problem = self._check_provider_token(provider_token)
        if problem:
            await self._error(send, 403, problem)
            return

        if self._script:
            injected = self._script.popleft()
            if injected.delay:
                await asyncio.sleep(injected.delay)
            if injected.status != 200:
                await self._error(send, injected.status, injected.reason, retry_after=injected.retry_after,
                                  timestamp_ms=injected.timestamp_ms)
                return

        device_token = path[len("/3/device/"):] if path.startswith("/3/device/") else ""
        reason = self._check_request(device_token, headers, body)
        if reason:
            await self._error(send, REASONS[reason], reason)
            return
        if device_token in self.unregistered:
            await self._error(send, 410, "Unregistered", timestamp_ms=self.unregistered[device_token])
            return
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
        self.pushes.append(RecordedPush(
            device_token=device_token, headers={k: v for k, v in headers.items() if k.startswith("apns-")},
            payload=json.loads(body), apns_id=apns_id, provider_token=provider_token,
            http_version=scope["http_version"], client=scope.get("client"),
        ))
        await _respond(send, 200, b"", {"apns-id": apns_id})

    def _check_provider_token(self, token: str) -> str | None:
        claims = self._verified.get(token)
        if claims is None:
            try:
                header = jwt.get_unverified_header(token)
                if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
                    return "InvalidProviderToken"
                claims = jwt.decode(token, self._public, algorithms=["ES256"],
                                    options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                             "require": ["iss", "iat"]})
            except jwt.PyJWTError:
                return "InvalidProviderToken"
            if claims.get("iss") != self.team_id or not isinstance(claims.get("iat"), int):
                return "InvalidProviderToken"
            self._verified[token] = claims
        now = self.now()
        iat = claims["iat"]
        if iat > now + 60:
            return "InvalidProviderToken"
        if now - iat > TOKEN_LIFETIME:
            return "ExpiredProviderToken"
        seen = self.provider_tokens.get(token)
        if seen is None:
            seen = self.provider_tokens[token] = ProviderTokenSeen(iat=iat, first_seen=now, last_seen=now)
        seen.last_seen = now
        seen.uses += 1
        return None

    def _check_request(self, device_token: str, headers: dict[str, str], body: bytes) -> str | None:
        topic = headers.get("apns-topic")
        if topic is None:
            return "MissingTopic"
        if not topic.strip() or " " in topic:
            return "BadTopic"
        if topic != self.topic:
            return "TopicDisallowed"
        push_type = headers.get("apns-push-type")
        if push_type not in PUSH_TYPES:
            return "InvalidPushType"
        priority = headers.get("apns-priority", "10")
        if priority not in ("1", "5", "10") or (priority == "10" and push_type == "background"):
            return "BadPriority"
        expiration = headers.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return "BadExpirationDate"
        collapse = headers.get("apns-collapse-id")
        if collapse is not None and len(collapse.encode()) > 64:
            return "BadCollapseId"
        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID.match(apns_id):
            return "BadMessageId"
        if not device_token:
            return "MissingDeviceToken"
        if not _HEX_TOKEN.match(device_token):
            return "BadDeviceToken"
        if not body:
            return "PayloadEmpty"
        if len(body) > MAX_PAYLOAD:
            return "PayloadTooLarge"
        try:
            payload = json.loads(body)
        except ValueError:
            return "PayloadEmpty"
        aps = payload.get("aps") if isinstance(payload, dict) else None
        if not isinstance(aps, dict):
            return "PayloadEmpty"
        if push_type == "alert" and not aps.get("alert"):
            return "PayloadEmpty"
        if push_type == "background" and (aps.get("content-available") != 1 or aps.get("alert")):
            return "PayloadEmpty"
        return None

    async def _error(self, send: Send, status: int, reason: str, *, retry_after: str | None = None,
                     timestamp_ms: int | None = None) -> None:
        payload: dict[str, Any] = {"reason": reason}
        if status == 410:
            payload["timestamp"] = timestamp_ms if timestamp_ms is not None else int(self.now() * 1000)
        self.rejected.append({"status": status, **payload})
        headers = {"content-type": "application/json", "apns-id": str(uuid.uuid4()).upper()}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        await _respond(send, status, json.dumps(payload).encode(), headers)

    # Control endpoints --------------------------------------------------------------------------
    def _control(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        spec: dict[str, Any] = json.loads(body) if body else {}
        if method == "GET" and path == "/_emulator/stats":
            return 200, self.stats()
        if method == "GET" and path == "/_emulator/credentials":
            return 200, {"team_id": self.team_id, "key_id": self.key_id, "topic": self.topic,
                         "private_key": self.key_pem()}
        if method != "POST":
            return 405, {"error": "method not allowed"}
        if path == "/_emulator/fail":
            self.fail_next(spec["reason"], int(spec.get("count", 1)), status=spec.get("status"),
                           retry_after=spec.get("retry_after"), timestamp_ms=spec.get("timestamp"),
                           delay=float(spec.get("delay", 0.0)))
            return 200, {"queued": len(self._script)}
        if path == "/_emulator/unregister":
            self.unregister(spec["token"], spec.get("at"))
            return 200, {}
        if path == "/_emulator/clock":
            self._offset += float(spec.get("advance", 0.0))
            return 200, {"now": self.now()}
        if path == "/_emulator/reset":
            self.reset()
            return 200, {}
        return 404, {"error": "unknown control endpoint"}


async def _respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
    await send({"type": "http.response.body", "body": body})


async def _serve(args: argparse.Namespace) -> None:
    key = None
    if args.key_file and Path(args.key_file).exists():
        loaded = serialization.load_pem_private_key(Path(args.key_file).read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise SystemExit(f"{args.key_file} is not an ES256 key")
        key = loaded
    emulator = ApnsEmulator(team_id=args.team_id, key_id=args.key_id, topic=args.topic,
                            private_key=key, tls=not args.plaintext)
    url = await emulator.start(args.host, args.port)
    if args.key_file and key is None:
        Path(args.key_file).write_text(emulator.key_pem(), encoding="utf-8")
    if args.ca_out and emulator.ca_file:
        Path(args.ca_out).write_bytes(Path(emulator.ca_file).read_bytes())
    print(f"APNs emulator on {url} (team {args.team_id}, key {args.key_id}, topic {args.topic})"
          f"{'; CA at ' + args.ca_out if args.ca_out and emulator.ca_file else ''}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--team-id", default="TEAM123456")
    parser.add_argument("--key-id", default="KEY1234567")
    parser.add_argument("--topic", default="com.example.herald")
    parser.add_argument("--key-file", help="the team's .p8 key: read if it exists, else written")
    parser.add_argument("--ca-out", help="write the CA certificate that signed the server's here")
    parser.add_argument("--plaintext", action="store_true", help="h2c prior knowledge instead of TLS")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()


__all__ = ["REASONS", "ApnsEmulator", "ProviderTokenSeen", "RecordedPush"]
