"""A local FCM HTTP v1 emulator: the OAuth 2 token endpoint and ``messages:send``.

It checks what the real service checks and answers in the real shapes:

* ``POST /token``: a ``jwt-bearer`` grant whose RS256 assertion is verified with the service
  account's public key (``iss``, ``aud`` = the token URI, ``scope``, ``iat``/``exp`` within an
  hour by the emulator's clock); answers ``{"access_token", "expires_in", "token_type"}`` or an
  OAuth error (``invalid_grant``, ``invalid_scope``, ...).
* ``POST /v1/projects/{project}/messages:send``: a live bearer token (else 401
  ``UNAUTHENTICATED``), the project, then the body against the ``SendMessageRequest`` schema of
  the FCM v1 discovery document shipped in google-api-python-client (types, enums, unknown
  fields, required fields, string-only ``data``, exactly one target); answers
  ``{"name": "projects/{project}/messages/{id}"}``.

Tests drive it in-process (``fail_next``, ``unregister``, ``revoke_tokens``, ``clock``); other
processes use the control endpoints under ``/_emulator/``. Run it alone with
``python -m tests.emulators.fcm --port 8089 --service-account-out sa.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import googleapiclient.discovery_cache
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
RESERVED_DATA_KEYS = ("from", "message_type")
RESERVED_DATA_PREFIXES = ("google.", "gcm.", "gcm.notification.")
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_:\-]{8,4096}$")
_BAD_TOKEN = "The registration token is not a valid FCM registration token"
_BAD_TIMES = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
              "Check your iat and exp values in the JWT claim.")

# errorCode -> (HTTP status, google.rpc status, message), as FCM documents them.
DOCUMENTED_ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Messages'."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}


def load_discovery() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(googleapiclient.discovery_cache.get_static_doc("fcm", "v1"))
    return doc


def error_body(http_status: int, status: str, message: str, *, error_code: str | None = None,
               violations: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if error_code is not None:
        details.append({"@type": FCM_ERROR, "errorCode": error_code})
    if violations:
        details.append({"@type": BAD_REQUEST,
                        "fieldViolations": [{"field": f, "description": d} for f, d in violations]})
    err: dict[str, Any] = {"code": http_status, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


# Discovery-schema validation -------------------------------------------------------------------
_DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def _camel(name: str) -> str:
    # Proto3 JSON accepts both the lowerCamelCase JSON name and the original snake_case name.
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _required(schema: dict[str, Any]) -> list[str]:
    return [name for name, prop in (schema.get("properties") or {}).items()
            if str(prop.get("description", "")).startswith("Required.")]


def validate_schema(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str,
                    out: list[tuple[str, str]]) -> None:
    """Collect (field path, description) violations of ``value`` against a discovery schema."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"]]
    if value is None:
        return  # proto3 JSON: null means "default"
    kind = schema.get("type")
    if kind == "any" or kind is None:
        return
    if kind == "object":
        if not isinstance(value, dict):
            out.append((path, f"Invalid value at '{path}', expected an object"))
            return
        props: dict[str, Any] | None = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = f"{path}.{key}" if props is not None else f"{path}[{key!r}]"
            if props is not None and (key in props or _camel(key) in props):
                validate_schema(item, props.get(key) or props[_camel(key)], schemas, sub, out)
            elif extra is not None:
                validate_schema(item, extra, schemas, f"{path}[{key!r}]", out)
            elif props is not None:
                out.append((path, f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': "
                                  "Cannot find field."))
        for name in _required(schema):
            if value.get(name) is None:
                out.append((f"{path}.{name}", f"Required field '{path}.{name}' is missing"))
        return
    if kind == "array":
        if not isinstance(value, list):
            out.append((path, f"Invalid value at '{path}', expected a list"))
            return
        for i, item in enumerate(value):
            validate_schema(item, schema.get("items", {}), schemas, f"{path}[{i}]", out)
        return
    if kind == "string":
        if not isinstance(value, str):
            out.append((path, f"Invalid value at '{path}' ({type(value).__name__}), expected a string"))
            return
        if "enum" in schema and value not in schema["enum"]:
            out.append((path, f"Invalid value at '{path}' ({value!r}), expected one of {schema['enum']}"))
        fmt = schema.get("format")
        if fmt == "google-duration" and not _DURATION.match(value):
            out.append((path, f"Invalid value at '{path}' ({value!r}), expected a duration like '3.5s'"))
        if fmt == "google-datetime" and not _DATETIME.match(value):
            out.append((path, f"Invalid value at '{path}' ({value!r}), expected an RFC 3339 timestamp"))
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            out.append((path, f"Invalid value at '{path}', expected a boolean"))
        return
    if kind == "integer":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.lstrip("-").isdigit())
        if not ok:
            out.append((path, f"Invalid value at '{path}', expected an integer"))
        return
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append((path, f"Invalid value at '{path}', expected a number"))
        return


def validate_send_request(body: Any, discovery: dict[str, Any]) -> list[tuple[str, str]]:
    """Every violation of ``body`` against ``SendMessageRequest``, plus FCM's own rules."""
    schemas = discovery["schemas"]
    out: list[tuple[str, str]] = []
    validate_schema(body, {"$ref": "SendMessageRequest"}, schemas, "", out)
    out = [(p.lstrip("."), d) for p, d in out]
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, dict):
        targets = [t for t in ("token", "topic", "condition", "fid") if message.get(t)]
        if len(targets) != 1:
            out.append(("message", "Exactly one of token, topic, condition or fid must be set"))
        data = message.get("data")
        if isinstance(data, dict):
            for key in data:
                if key in RESERVED_DATA_KEYS or key.startswith(RESERVED_DATA_PREFIXES):
                    out.append(("message.data", f"Invalid data payload key: {key}"))
        if message.get("android") and (message.get("androidV2") or message.get("android_v2")):
            out.append(("message", "android and androidV2 are mutually exclusive"))
    return out


# The emulator ------------------------------------------------------------------------------------
@dataclass(slots=True)
class InjectedError:
    status: int
    body: dict[str, Any]
    retry_after: str | None = None
    delay: float = 0.0


@dataclass(slots=True)
class RecordedSend:
    project: str
    access_token: str
    body: dict[str, Any]
    name: str


@dataclass
class FcmEmulator:
    project_id: str = "herald-test"
    client_email: str = "herald@herald-test.iam.gserviceaccount.com"
    token_expires_in: int = 3600
    clock: Callable[[], float] = time.time
    key_bits: int = 2048
    private_key: rsa.RSAPrivateKey | None = None
    discovery: dict[str, Any] = field(default_factory=load_discovery)

    sent: list[RecordedSend] = field(default_factory=list, init=False)
    rejected: list[dict[str, Any]] = field(default_factory=list, init=False)
    token_requests: int = field(default=0, init=False)
    issued: dict[str, float] = field(default_factory=dict, init=False)  # access token -> expiry
    unregistered: set[str] = field(default_factory=set, init=False)
    base_url: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.private_key is None:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=self.key_bits)
        self._key_id = secrets.token_hex(20)
        self._ids = itertools.count(1)
        self._script: deque[InjectedError] = deque()
        self._offset = 0.0  # moved by the control endpoint
        self._runner: web.AppRunner | None = None

    # What tests and the control endpoint use ---------------------------------------------------
    def now(self) -> float:
        return self.clock() + self._offset

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def service_account(self) -> dict[str, Any]:
        """A service-account key file (as JSON data) whose token_uri is this emulator."""
        assert self.private_key is not None
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self._key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1" * 21,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        }

    def fail_next(self, error_code: str, count: int = 1, *, retry_after: float | str | None = None,
                  message: str | None = None, delay: float = 0.0) -> None:
        """Answer the next ``count`` sends with a documented error (see DOCUMENTED_ERRORS), or
        ``UNAUTHENTICATED`` (a plain 401 without an FCM error code)."""
        if error_code == "UNAUTHENTICATED":
            status, body = 401, error_body(401, "UNAUTHENTICATED", message or UNAUTHENTICATED_MESSAGE)
        else:
            http_status, rpc_status, default = DOCUMENTED_ERRORS[error_code]
            status = http_status
            body = error_body(http_status, rpc_status, message or default, error_code=error_code)
        ra = None if retry_after is None else str(retry_after)
        for _ in range(count):
            self._script.append(InjectedError(status, body, ra, delay))

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Hold the next ``count`` sends for ``seconds`` before answering normally."""
        for _ in range(count):
            self._script.append(InjectedError(200, {}, None, seconds))

    def unregister(self, token: str) -> None:
        self.unregistered.add(token)

    def revoke_tokens(self) -> None:
        self.issued.clear()

    def reset(self) -> None:
        self.sent.clear()
        self.rejected.clear()
        self._script.clear()
        self.issued.clear()
        self.unregistered.clear()
        self.token_requests = 0

    # HTTP ------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        app.router.add_post("/_emulator/fail", self._control_fail)
        app.router.add_post("/_emulator/unregister", self._control_unregister)
        app.router.add_post("/_emulator/revoke", self._control_revoke)
        app.router.add_post("/_emulator/clock", self._control_clock)
        app.router.add_post("/_emulator/config", self._control_config)
        app.router.add_post("/_emulator/reset", self._control_reset)
        app.router.add_get("/_emulator/stats", self._control_stats)
        app.router.add_get("/_emulator/service-account", self._control_service_account)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # With proto given, asyncio sets TCP_NODELAY on accepted sockets (else Nagle adds ~40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.base_url = f"http://{host}:{sock.getsockname()[1]}"
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FcmEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # OAuth 2 token endpoint -------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')!r}")
        assertion = form.get("assertion")
        if not isinstance(assertion, str):
            return _oauth_error("invalid_request", "Missing required parameter: assertion")
        assert self.private_key is not None
        try:
            claims = jwt.decode(assertion, self.private_key.public_key(), algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False, "verify_aud": False})
        except jwt.InvalidSignatureError:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "Invalid JWT: malformed assertion.")
        if jwt.get_unverified_header(assertion).get("kid") not in (None, self._key_id):
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != self.client_email:
            return _oauth_error("invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != self.token_uri:
            return _oauth_error("invalid_grant", "Invalid JWT: audience does not match the token URI.")
        now = self.now()
        iat, exp = claims.get("iat"), claims.get("exp")
        if (not isinstance(iat, int | float) or not isinstance(exp, int | float) or exp <= now
                or iat > now + 60 or exp - iat > 3600):
            return _oauth_error("invalid_grant", _BAD_TIMES)
        if SCOPE not in str(claims.get("scope", "")).split():
            return _oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29.emu-" + secrets.token_urlsafe(48)
        self.issued[token] = now + self.token_expires_in
        return web.json_response({"access_token": token, "expires_in": self.token_expires_in,
                                  "token_type": "Bearer"})

    # messages:send ----------------------------------------------------------------------------
    async def _send(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        expiry = self.issued.get(token)
        if expiry is None or self.now() >= expiry:
            return self._reject(401, error_body(401, "UNAUTHENTICATED", UNAUTHENTICATED_MESSAGE), None)
        project = request.match_info["project"]
        if project != self.project_id:
            msg = (f"Permission 'cloudmessaging.messages.create' denied on resource "
                   f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).")
            return self._reject(403, error_body(403, "PERMISSION_DENIED", msg), None)
        if self._script:
            injected = self._script.popleft()
            if injected.delay:
                await asyncio.sleep(injected.delay)
            if injected.status != 200:
                return self._reject(injected.status, injected.body, injected.retry_after)
        if not request.content_type.startswith("application/json"):
            return self._reject(400, error_body(400, "INVALID_ARGUMENT", "Invalid content type"), None)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._reject(400, error_body(400, "INVALID_ARGUMENT",
                                                "Invalid JSON payload received. Unexpected token."), None)
        violations = validate_send_request(body, self.discovery)
        if violations:
            return self._reject(400, error_body(400, "INVALID_ARGUMENT", violations[0][1],
                                                error_code="INVALID_ARGUMENT", violations=violations), None)
        target = body["message"].get("token")
        if target is not None and not _TOKEN_SHAPE.match(target):
            bad = error_body(400, "INVALID_ARGUMENT", _BAD_TOKEN, error_code="INVALID_ARGUMENT",
                             violations=[("message.token", _BAD_TOKEN)])
            return self._reject(400, bad, None)
        if target in self.unregistered:
            return self._reject(404, error_body(404, "NOT_FOUND", "Requested entity was not found.",
                                                error_code="UNREGISTERED"), None)
        name = f"projects/{project}/messages/{next(self._ids):016d}"
        self.sent.append(RecordedSend(project=project, access_token=token, body=body, name=name))
        return web.json_response({"name": name})

    def _reject(self, status: int, body: dict[str, Any], retry_after: str | None) -> web.Response:
        self.rejected.append({"status": status, "body": body})
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return web.json_response(body, status=status, headers=headers)

    # Control endpoints --------------------------------------------------------------------------
    async def _control_fail(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.fail_next(spec["code"], int(spec.get("count", 1)), retry_after=spec.get("retry_after"),
                       message=spec.get("message"), delay=float(spec.get("delay", 0.0)))
        return web.json_response({"queued": len(self._script)})

    async def _control_unregister(self, request: web.Request) -> web.Response:
        self.unregister((await request.json())["token"])
        return web.json_response({})

    async def _control_revoke(self, _request: web.Request) -> web.Response:
        self.revoke_tokens()
        return web.json_response({})

    async def _control_clock(self, request: web.Request) -> web.Response:
        self._offset += float((await request.json()).get("advance", 0.0))
        return web.json_response({"now": self.now()})

    async def _control_config(self, request: web.Request) -> web.Response:
        spec = await request.json()
        if "token_expires_in" in spec:
            self.token_expires_in = int(spec["token_expires_in"])
        return web.json_response({"token_expires_in": self.token_expires_in})

    async def _control_reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({})

    async def _control_stats(self, _request: web.Request) -> web.Response:
        return web.json_response({
            "sent": len(self.sent),
            "rejected": len(self.rejected),
            "token_requests": self.token_requests,
            "live_tokens": sum(1 for exp in self.issued.values() if exp > self.now()),
            "last": self.sent[-1].body if self.sent else None,
        })

    async def _control_service_account(self, _request: web.Request) -> web.Response:
        return web.json_response(self.service_account())


def _oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


async def _serve(args: argparse.Namespace) -> None:
    emulator = FcmEmulator(project_id=args.project, token_expires_in=args.token_expires_in)
    url = await emulator.start(args.host, args.port)
    if args.service_account_out:
        with open(args.service_account_out, "w", encoding="utf-8") as fh:
            json.dump(emulator.service_account(), fh)
    print(f"FCM emulator on {url} (project {args.project}); service account at "
          f"{args.service_account_out or url + '/_emulator/service-account'}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--project", default="herald-test")
    parser.add_argument("--token-expires-in", type=int, default=3600)
    parser.add_argument("--service-account-out", help="write the service-account JSON here")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
