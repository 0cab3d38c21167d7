"""A local Web Push service (RFC 8030) that checks what a real one checks, and more.

It plays both the push service and the user agent behind it: it creates subscriptions itself
(a P-256 key pair and a 16-byte auth secret per subscription, like a browser), so it can
*decrypt* every push message (RFC 8291 ``aes128gcm``, implemented here independently of the
``http_ece`` library herald sends with) and record the plaintext.

On ``POST /push/{id}`` it first waits if told to (``delay_next``: the request read whole, the
answer held, as a push service that took the message and went quiet), then checks, in this
order, answering as push services do:

* the subscription exists (404) and was not unsubscribed (410);
* an injected failure (``fail_next``) answers instead, with ``Retry-After`` if given;
* ``Authorization: vapid t=<jwt>, k=<key>`` (RFC 8292): an ES256 JWT whose signature verifies
  with ``k``, ``aud`` equal to the endpoint's origin, ``exp`` in the future and at most 24 h
  away, ``sub`` a ``mailto:``/``https:`` URI (401 otherwise); a subscription created with an
  ``application_server_key`` accepts only that ``k`` (403);
* ``TTL`` present (400), ``Urgency`` and ``Topic`` well formed (400), the body at most 4096
  bytes (413), ``Content-Encoding: aes128gcm`` (400), and the body decrypts with exactly one
  padding delimiter 0x02 in the last record (400).

It answers ``201 Created`` with a ``Location`` for the message.

Tests drive it in-process (``create_subscription``, ``unsubscribe``, ``fail_next``,
``delay_next``, ``received``, ``clock``); other processes use the control endpoints under ``/_emulator/``.
Run it alone with ``python -m tests.emulators.webpush --port 8090``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAX_BODY = 4096
MAX_JWT_LIFETIME = 24 * 3600
_URGENCIES = {"very-low", "low", "normal", "high"}
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_VAPID = re.compile(r"^vapid\s+(.+)$", re.IGNORECASE)


class PushRejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True)
class DerivedKeys:
    ecdh_secret: bytes
    ikm: bytes
    cek: bytes
    nonce: bytes


def derive_keys(
    ua_private: ec.EllipticCurvePrivateKey, as_public: bytes, auth_secret: bytes, salt: bytes
) -> DerivedKeys:
    """RFC 8291 §3.3-3.4 seen from the user agent."""
    sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
    ecdh_secret = ua_private.exchange(ec.ECDH(), sender)
    key_info = b"WebPush: info\x00" + _point(ua_private.public_key()) + as_public
    ikm = _hkdf(auth_secret, ecdh_secret, key_info, 32)
    cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    return DerivedKeys(ecdh_secret, ikm, cek, nonce)


def decrypt_aes128gcm(body: bytes, ua_private: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """Decrypt an RFC 8188 ``aes128gcm`` body carrying an RFC 8291 push message."""
    if len(body) < 21:
        raise PushRejected(400, "body shorter than the aes128gcm header")
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    if idlen != 65:
        raise PushRejected(400, "keyid must be the 65-byte sender public key (RFC 8291 §4)")
    as_public = body[21:86]
    if rs < 18:
        raise PushRejected(400, "record size too small")
    try:
        keys = derive_keys(ua_private, as_public, auth_secret, salt)
    except ValueError:
        raise PushRejected(400, "keyid is not a P-256 point") from None
    data = body[86:]
    if not data:
        raise PushRejected(400, "no records")
    records = [data[i : i + rs] for i in range(0, len(data), rs)]
    aead = AESGCM(keys.cek)
    plaintext = b""
    for seq, record in enumerate(records):
        iv = (int.from_bytes(keys.nonce, "big") ^ seq).to_bytes(12, "big")
        try:
            padded = aead.decrypt(iv, record, None)
        except InvalidTag:
            raise PushRejected(400, f"record {seq} does not decrypt") from None
        unpadded = padded.rstrip(b"\x00")
        if not unpadded:
            raise PushRejected(400, f"record {seq} has no padding delimiter")
        last = seq == len(records) - 1
        if unpadded[-1] != (2 if last else 1):
            raise PushRejected(400, f"record {seq} has delimiter {unpadded[-1]:#04x}")
        plaintext += unpadded[:-1]
    return plaintext


def verify_vapid(
    authorization: str | None, audience: str, *, now: float, bound_key: str | None = None
) -> dict[str, Any]:
    """Check an RFC 8292 ``vapid`` Authorization header; return the JWT claims."""
    if not authorization:
        raise PushRejected(401, "missing Authorization")
    match = _VAPID.match(authorization.strip())
    if not match:
        raise PushRejected(401, "Authorization scheme is not vapid")
    params: dict[str, str] = {}
    for part in match.group(1).split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            params[name.strip().lower()] = value.strip()
    token, key_b64 = params.get("t"), params.get("k")
    if not token or not key_b64:
        raise PushRejected(401, "vapid needs both t= and k=")
    try:
        key_bytes = b64url_decode(key_b64)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key_bytes)
        header_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(b64url_decode(header_b64))
        claims = json.loads(b64url_decode(claims_b64))
        signature = b64url_decode(sig_b64)
    except (ValueError, binascii.Error, json.JSONDecodeError):
        raise PushRejected(401, "malformed vapid token or key") from None
    if header.get("alg") != "ES256" or len(signature) != 64:
        raise PushRejected(401, "vapid token must be ES256")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PushRejected(401, "vapid signature does not verify with k") from None
    if claims.get("aud") != audience:
        raise PushRejected(401, f"aud {claims.get('aud')!r} is not {audience!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now:
        raise PushRejected(401, "vapid token expired")
    if exp > now + MAX_JWT_LIFETIME:
        raise PushRejected(401, "vapid token lives longer than 24 hours")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
        raise PushRejected(401, "sub must be a mailto: or https: URI")
    if bound_key is not None and key_b64.rstrip("=") != bound_key.rstrip("="):
        raise PushRejected(403, "k is not the applicationServerKey this subscription was made with")
    result: dict[str, Any] = claims
    return result


@dataclass
class EmulatedSubscription:
    id: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str | None = None
    gone: bool = False


@dataclass
class PushRecord:
    subscription_id: str
    plaintext: bytes
    ttl: int
    urgency: str
    topic: str | None
    headers: dict[str, str]
    claims: dict[str, Any]


@dataclass
class WebPushEmulator:
    clock: Callable[[], float] = time.time
    subscriptions: dict[str, EmulatedSubscription] = field(default_factory=dict)
    received: list[PushRecord] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    base_url: str = ""
    _failures: deque[tuple[int, str | None]] = field(default_factory=deque)
    _delays: deque[float] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    # In-process control ----------------------------------------------------------------------
    def create_subscription(
        self, application_server_key: str | None = None, base_url: str | None = None
    ) -> dict[str, Any]:
        sub = EmulatedSubscription(
            id=secrets.token_urlsafe(16),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            auth=secrets.token_bytes(16),
            application_server_key=application_server_key,
        )
        self.subscriptions[sub.id] = sub
        return {
            "endpoint": f"{base_url or self.base_url}/push/{sub.id}",
            "expirationTime": None,
            "keys": {"p256dh": b64url(_point(sub.private_key.public_key())), "auth": b64url(sub.auth)},
        }

    def unsubscribe(self, subscription: dict[str, Any] | str) -> None:
        sub_id = subscription if isinstance(subscription, str) else subscription["endpoint"].rsplit("/", 1)[1]
        self.subscriptions[sub_id].gone = True

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        self._failures.extend([(status, retry_after)] * count)

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Read the next requests whole, then wait ``seconds`` before answering them."""
        self._delays.extend([seconds] * count)

    def reset(self) -> None:
        self.received.clear()
        self.rejected.clear()
        self._failures.clear()
        self._delays.clear()

    # HTTP ------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{sub_id}", self._push)
        app.router.add_post("/_emulator/subscriptions", self._create)
        app.router.add_delete("/_emulator/subscriptions/{sub_id}", self._delete)
        app.router.add_post("/_emulator/fail", self._fail)
        app.router.add_get("/_emulator/messages", self._messages)
        app.router.add_post("/_emulator/reset", self._reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        assert site._server is not None and site._server.sockets
        bound = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _check(self, request: web.Request, sub: EmulatedSubscription, body: bytes) -> PushRecord:
        audience = f"{request.scheme}://{request.host}"
        claims = verify_vapid(
            request.headers.get("Authorization"),
            audience,
            now=self.clock(),
            bound_key=sub.application_server_key,
        )
        ttl_header = request.headers.get("TTL")
        if ttl_header is None or not ttl_header.isdigit():
            raise PushRejected(400, "TTL header missing or not a non-negative integer")
        urgency = request.headers.get("Urgency", "normal")
        if urgency not in _URGENCIES:
            raise PushRejected(400, f"Urgency {urgency!r} is not one of {sorted(_URGENCIES)}")
        topic = request.headers.get("Topic")
        if topic is not None and not _TOPIC.match(topic):
            raise PushRejected(400, "Topic must be at most 32 base64url characters")
        if len(body) > MAX_BODY:
            raise PushRejected(413, f"payload of {len(body)} bytes exceeds {MAX_BODY}")
        plaintext = b""
        if body:
            if request.headers.get("Content-Encoding") != "aes128gcm":
                raise PushRejected(400, "Content-Encoding must be aes128gcm")
            plaintext = decrypt_aes128gcm(body, sub.private_key, sub.auth)
        return PushRecord(sub.id, plaintext, int(ttl_header), urgency, topic, dict(request.headers), claims)

    async def _push(self, request: web.Request) -> web.Response:
        if self._delays:
            await request.read()  # the whole request is in: a timeout now is after sending
            await asyncio.sleep(self._delays.popleft())
        sub = self.subscriptions.get(request.match_info["sub_id"])
        if sub is None:
            return self._reject(404, "no such subscription")
        if sub.gone:
            return self._reject(410, "subscription expired or unsubscribed")
        if self._failures:
            status, retry_after = self._failures.popleft()
            return self._reject(status, "injected failure", retry_after)
        body = await request.read()
        try:
            record = self._check(request, sub, body)
        except PushRejected as exc:
            return self._reject(exc.status, exc.reason)
        self.received.append(record)
        n = next(self._ids)
        return web.Response(
            status=201,
            headers={"Location": f"{request.scheme}://{request.host}/messages/{n}", "TTL": str(record.ttl)},
        )

    def _reject(self, status: int, reason: str, retry_after: str | None = None) -> web.Response:
        self.rejected.append((status, reason))
        headers = {"Retry-After": retry_after} if retry_after else {}
        return web.json_response(
            {"code": status, "errno": 0, "message": reason}, status=status, headers=headers
        )

    async def _create(self, request: web.Request) -> web.Response:
        options = await request.json() if request.can_read_body else {}
        base = f"{request.scheme}://{request.host}"
        return web.json_response(self.create_subscription(options.get("application_server_key"), base))

    async def _delete(self, request: web.Request) -> web.Response:
        if request.match_info["sub_id"] not in self.subscriptions:
            return web.Response(status=404)
        self.unsubscribe(request.match_info["sub_id"])
        return web.Response(status=204)

    async def _fail(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.fail_next(int(spec["status"]), int(spec.get("count", 1)), spec.get("retry_after"))
        return web.Response(status=204)

    async def _messages(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "subscription_id": r.subscription_id,
                    "plaintext": r.plaintext.decode("utf-8", "replace"),
                    "ttl": r.ttl,
                    "urgency": r.urgency,
                    "topic": r.topic,
                }
                for r in self.received
            ]
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(status=204)


async def _serve(host: str, port: int) -> None:
    emulator = WebPushEmulator()
    base = await emulator.start(host, port)
    print(f"webpush emulator listening on {base}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local Web Push service for herald's tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
