"""A local SendGrid v3 Mail Send API that speaks the real protocol, plus a signed Event Webhook.

In tests::

    emulator = SendGridEmulator()
    base_url = await emulator.start()          # http://127.0.0.1:<port>
    emulator.fail_next("rate_limited", reset_in=30)
    ...
    await emulator.stop()

As a process (benchmarks)::

    python -m tests.emulators.sendgrid --port 8702 [--no-validate] [--latency 0.02]

What it does, as SendGrid does:

* ``POST /v3/mail/send`` with ``Authorization: Bearer <api key>``; another key is ``401``.
* Every request is validated against SendGrid's own OpenAPI document
  (``tests/emulators/specs/sendgrid_mail_send_v3.json``, or ``$HERALD_PROVIDER_SPECS``) with
  openapi-core; a mismatch is recorded in :attr:`spec_errors` and answered ``400``. Error
  answers with a documented status are validated against the spec's response schema too.
* The checks the spec cannot express (see the spec README): at least one personalization, a
  body (``content`` or ``template_id``), a subject, and, when :attr:`verified_senders` is set,
  a verified ``from`` (``403`` otherwise).
* ``202`` with an empty body and an ``X-Message-Id`` header.

Event Webhook: the emulator holds an ECDSA P-256 key pair like SendGrid's signed webhook;
:meth:`events_for` builds an event batch for an accepted send and :meth:`sign` signs it.

Control: :meth:`fail_next` / :meth:`set_latency` / :meth:`reset` from Python, or the same over
HTTP under ``/_emulator/`` (``POST fail``, ``POST latency``, ``POST reset``, ``GET requests``,
``GET spec-errors``, ``GET public-key``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hmac
import json
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from openapi_core import OpenAPI, testing

from tests.emulators import specs_dir

SPEC_FILE = "sendgrid_mail_send_v3.json"
REAL_HOST = "https://api.sendgrid.com"
DEFAULT_API_KEY = "SG.emulator-key.0123456789abcdefghijklmnopqrstuvwxyz"
MAX_PERSONALIZATIONS = 1000  # SendGrid's limit on personalizations, and on recipients, per request
_DOCUMENTED = {202, 400, 401, 403, 404, 405, 413, 500}



@functools.cache
def load_spec() -> OpenAPI:
    path = specs_dir() / SPEC_FILE
    if not path.is_file():
        # A missing spec must fail the tests, never skip them.
        raise FileNotFoundError(f"SendGrid OpenAPI spec not found at {path}; set HERALD_PROVIDER_SPECS")
    return OpenAPI.from_file_path(str(path))


def describe_validation_error(error: BaseException) -> str:
    parts = []
    current: BaseException | None = error
    while current is not None and len(parts) < 4:
        text = str(current)
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        schema_errors = getattr(current, "schema_errors", None)
        if schema_errors:
            parts.extend(str(getattr(e, "message", e)) for e in schema_errors)
        current = current.__cause__
    return " / ".join(parts)


@dataclass(slots=True)
class Fault:
    status: int = 500
    message: str = ""
    field_name: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    reset_in: float | None = None  # 429: X-RateLimit-Reset = now + reset_in, computed when answered


#: The documented error answers, by name: (status, message, field).
FAULT_KINDS: dict[str, tuple[int, str, str | None]] = {
    "rate_limited": (429, "too many requests", None),
    "server_error": (500, "internal server error", None),
    "unavailable": (503, "service unavailable", None),
    "unauthorized": (401, "The provided authorization grant is invalid, expired, or revoked", None),
    "forbidden": (403, "access forbidden", None),
    "unverified_sender": (
        403,
        "The from address does not match a verified Sender Identity. Mail cannot be sent until this "
        "error is resolved.",
        "from",
    ),
    "bad_request": (400, "invalid request", None),
    "too_large": (413, "content too large", None),
    "not_found": (404, "not found", None),
}


@dataclass(slots=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    at: float
    answered: int | None = None
    peer: str | None = None  # client address: the same one for requests on a kept-alive connection
    message_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["body"] = self.body.decode("utf-8", "replace")
        return data


def _errors(message: str, field_name: str | None = None) -> dict[str, Any]:
    # The live API also sends "field": null and "help": null; the spec (OpenAPI 3.1, where
    # "nullable" means nothing) allows neither, so absent values are left out.
    error: dict[str, Any] = {"message": message}
    if field_name is not None:
        error["field"] = field_name
    return {"errors": [error]}


class SendGridEmulator:
    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        validate: bool = True,
        latency: float = 0.0,
        max_recorded: int | None = None,
        verified_senders: set[str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.validate = validate
        self.latency = latency
        # A long-running emulator (benchmarks) keeps only the latest requests.
        self.max_recorded = max_recorded
        self.verified_senders = verified_senders
        self.spec = load_spec() if validate else None
        self.requests: list[ReceivedRequest] = []
        self.spec_errors: list[str] = []
        self._faults: deque[Fault] = deque()
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self._signing_key = ec.generate_private_key(ec.SECP256R1())

    def _record(self, record: ReceivedRequest) -> None:
        self.requests.append(record)
        limit = self.max_recorded
        if limit is not None and len(self.requests) > 2 * limit:
            del self.requests[:-limit]

    # Control ---------------------------------------------------------------------------------

    def fail_next(
        self,
        kind: str = "server_error",
        count: int = 1,
        *,
        status: int | None = None,
        message: str | None = None,
        field_name: str | None = None,
        reset_in: float | None = None,
        reset_at: float | None = None,
        retry_after: float | str | None = None,
        delay: float = 0.0,
        remaining: int | None = None,
    ) -> None:
        """Answer the next ``count`` sends with ``kind`` (a :data:`FAULT_KINDS` name,
        ``"timeout"`` (needs ``delay``), ``"drop"``, or ``"custom"`` with ``status``).

        For ``rate_limited``, ``reset_in`` seconds (default 60) or an absolute ``reset_at``
        epoch second sets ``X-RateLimit-Reset`` as SendGrid does. SendGrid sends its rate limit
        headers on other answers too: for any other kind, ``reset_in``/``reset_at`` add them,
        with ``X-RateLimit-Remaining`` = ``remaining`` (default 599: the limit is not reached).
        """
        drop = kind == "drop"
        if kind not in FAULT_KINDS and kind not in ("timeout", "custom", "drop"):
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        d_status, d_message, d_field = FAULT_KINDS.get(kind, (status or 500, message or "error", None))
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        final_status = status if status is not None else d_status
        if final_status == 429 or reset_in is not None or reset_at is not None:
            headers["X-RateLimit-Limit"] = "600"
            default_remaining = 0 if final_status == 429 else 599
            headers["X-RateLimit-Remaining"] = str(default_remaining if remaining is None else remaining)
            if reset_at is not None:
                headers["X-RateLimit-Reset"] = str(int(reset_at))
            elif reset_in is None:
                reset_in = 60.0
        fault = Fault(
            status=0 if kind == "timeout" else final_status,
            message=message if message is not None else d_message,
            field_name=field_name if field_name is not None else d_field,
            headers=headers,
            delay=delay,
            drop=drop,
            reset_in=reset_in if reset_at is None else None,
        )
        self._faults.extend(Fault(**asdict(fault)) for _ in range(count))

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    def reset(self) -> None:
        self.requests.clear()
        self.spec_errors.clear()
        self._faults.clear()
        self.latency = 0.0

    @property
    def sent(self) -> list[ReceivedRequest]:
        """The sends that were accepted (answered 202)."""
        return [r for r in self.requests if r.answered == 202]

    # Server ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v3/mail/send", self._mail_send)
        app.router.add_post("/_emulator/fail", self._control_fail)
        app.router.add_post("/_emulator/latency", self._control_latency)
        app.router.add_post("/_emulator/reset", self._control_reset)
        app.router.add_get("/_emulator/requests", self._control_requests)
        app.router.add_get("/_emulator/spec-errors", self._control_spec_errors)
        app.router.add_get("/_emulator/public-key", self._control_public_key)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # SendGrid's API --------------------------------------------------------------------------

    def _authenticated(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.api_key.encode())

    def _mock_request(self, request: web.Request, body: bytes) -> testing.MockRequest:
        return testing.MockRequest(
            REAL_HOST,
            request.method,
            request.path,
            args=dict(request.query),
            headers=dict(request.headers),
            data=body,
            content_type=request.content_type,
        )

    def _validate(self, request: web.Request, body: bytes) -> list[str]:
        if self.spec is None:
            return []
        return [
            describe_validation_error(e)
            for e in self.spec.iter_request_errors(self._mock_request(request, body))
        ]

    def _answer(
        self,
        request: web.Request,
        body: bytes,
        record: ReceivedRequest,
        status: int,
        payload: Any = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        record.answered = status
        data = json.dumps(payload).encode() if payload is not None else b""
        if self.spec is not None and status in _DOCUMENTED:
            response = testing.MockResponse(data, status_code=status)
            for error in self.spec.iter_response_errors(self._mock_request(request, body), response):
                self.spec_errors.append(f"response {status}: {describe_validation_error(error)}")
        if payload is None:
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=data, content_type="application/json", headers=headers)

    def _semantic_error(self, data: Any) -> tuple[int, str, str | None] | None:
        """What SendGrid rejects although the spec lets it through."""
        if not isinstance(data, dict):
            return 400, "Bad Request", None
        personalizations = data.get("personalizations") or []
        if not personalizations:
            return (
                400,
                "The personalizations field is required and must have at least one personalization.",
                "personalizations",
            )
        if len(personalizations) > MAX_PERSONALIZATIONS:
            return 400, "The personalizations field must have no more than 1000 items.", "personalizations"
        recipients = sum(
            len(p.get(kind) or [])
            for p in personalizations
            if isinstance(p, dict)
            for kind in ("to", "cc", "bcc")
        )
        if recipients > MAX_PERSONALIZATIONS:
            return 400, "The total number of recipients must be no more than 1000.", "personalizations"
        has_template = bool(data.get("template_id"))
        if not has_template and not data.get("content"):
            return (
                400,
                "Unless a valid template_id is provided, the content parameter is required.",
                "content",
            )
        every_has_subject = all(isinstance(p, dict) and p.get("subject") for p in personalizations)
        if not has_template and not data.get("subject") and not every_has_subject:
            return (
                400,
                "The subject is required. You can get around this requirement if you use a template "
                "with a subject defined or if every personalization has a subject defined.",
                "subject",
            )
        content = data.get("content") or []
        types = [c.get("type") for c in content if isinstance(c, dict)]
        if "text/plain" in types and types[0] != "text/plain":
            return 400, "If present, text/plain content must be first, followed by text/html.", "content"
        sender = (data.get("from") or {}).get("email")
        if self.verified_senders is not None and sender not in self.verified_senders:
            return 403, FAULT_KINDS["unverified_sender"][1], "from"
        return None

    async def _mail_send(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        record = ReceivedRequest(
            request.method, request.path, dict(request.headers), body, parsed, time.time()
        )
        if request.transport is not None:
            record.peer = str(request.transport.get_extra_info("peername"))
        self._record(record)

        problems = self._validate(request, body)
        if problems:
            self.spec_errors.extend(f"{request.method} {request.path}: {p}" for p in problems)

        fault = self._faults.popleft() if self._faults else None
        delay = self.latency + (fault.delay if fault else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if fault is not None and fault.drop:
            record.answered = -1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the client

        if not self._authenticated(request):
            return self._answer(request, body, record, 401, _errors(FAULT_KINDS["unauthorized"][1]))
        if problems:
            message = "emulator: request does not match the SendGrid OpenAPI spec: " + problems[0]
            return self._answer(request, body, record, 400, _errors(message))
        if fault is not None and fault.status:
            headers = dict(fault.headers)
            if fault.reset_in is not None:
                headers["X-RateLimit-Reset"] = str(int(time.time() + fault.reset_in))
            return self._answer(
                request, body, record, fault.status, _errors(fault.message, fault.field_name), headers
            )
        semantic = self._semantic_error(parsed)
        if semantic is not None:
            status, message, field_name = semantic
            return self._answer(request, body, record, status, _errors(message, field_name))

        message_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        record.message_id = message_id
        sandbox = bool(((parsed.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable"))
        return self._answer(
            request, body, record, 200 if sandbox else 202, None, {"X-Message-Id": message_id}
        )

    # Event Webhook (SendGrid → herald) --------------------------------------------------------

    @property
    def public_key_b64(self) -> str:
        """The verification key, base64 DER (SubjectPublicKeyInfo), as SendGrid's console shows it."""
        der = self._signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign(self, payload: bytes, timestamp: str | None = None) -> tuple[str, str]:
        """(signature, timestamp) for the ``X-Twilio-Email-Event-Webhook-*`` headers."""
        stamp = timestamp if timestamp is not None else str(int(time.time()))
        signature = self._signing_key.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode(), stamp

    def events_for(self, record: ReceivedRequest, *kinds: str, **extra: Any) -> bytes:
        """An Event Webhook body with one event of each kind for the accepted send ``record``."""
        assert record.message_id is not None, "only accepted sends have events"
        personalization = record.json["personalizations"][0]
        events = []
        for kind in kinds:
            event: dict[str, Any] = {
                "email": personalization["to"][0]["email"],
                "timestamp": int(time.time()),
                "event": kind,
                "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
                "sg_message_id": f"{record.message_id}.filterdrecv-5645d9c87f-abcde-1-5F3A1B2C-3.0",
                "smtp-id": f"<{record.message_id}@ismtpd0001p1lon1.sendgrid.net>",
                "category": record.json.get("categories", []),
            }
            event.update(personalization.get("custom_args", {}))
            if kind == "bounce":
                event.update(
                    type="bounce", status="5.1.1", reason="550 5.1.1 The email account does not exist."
                )
            elif kind == "dropped":
                event.update(reason="Bounced Address", status="5.0.0")
            elif kind == "deferred":
                event.update(response="400 try again later", attempt="1")
            elif kind == "click":
                event.update(url="https://example.com/", useragent="Mozilla/5.0", ip="192.0.2.1")
            elif kind == "open":
                event.update(useragent="Mozilla/5.0", ip="192.0.2.1")
            event.update(extra)
            events.append(event)
        return json.dumps(events).encode()

    # Control endpoints -----------------------------------------------------------------------

    async def _control_fail(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            self.fail_next(
                data.get("kind", "server_error"),
                int(data.get("count", 1)),
                status=data.get("status"),
                message=data.get("message"),
                reset_in=data.get("reset_in"),
                reset_at=data.get("reset_at"),
                retry_after=data.get("retry_after"),
                delay=float(data.get("delay", 0.0)),
                remaining=data.get("remaining"),
            )
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"queued": len(self._faults)})

    async def _control_latency(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.set_latency(float(data.get("seconds", 0.0)))
        return web.json_response({"latency": self.latency})

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def _control_requests(self, request: web.Request) -> web.Response:
        return web.json_response([r.as_json() for r in self.requests])

    async def _control_spec_errors(self, request: web.Request) -> web.Response:
        return web.json_response(self.spec_errors)

    async def _control_public_key(self, request: web.Request) -> web.Response:
        return web.json_response({"public_key": self.public_key_b64})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SendGrid v3 Mail Send emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8702)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--no-validate", action="store_true", help="skip OpenAPI validation (benchmarks)")
    args = parser.parse_args(argv)
    emulator = SendGridEmulator(
        args.api_key, validate=not args.no_validate, latency=args.latency, max_recorded=10_000
    )
    print(f"sendgrid emulator on http://{args.host}:{args.port}", flush=True)
    web.run_app(emulator.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
