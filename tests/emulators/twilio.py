"""A local Twilio Programmable Messaging API (2010-04-01) that speaks the real protocol.

In tests::

    emulator = TwilioEmulator()
    base_url = await emulator.start()          # http://127.0.0.1:<port>
    emulator.fail_next("rate_limited", count=2, retry_after=7)
    ...
    await emulator.stop()

As a process (benchmarks)::

    python -m tests.emulators.twilio --port 8701 [--no-validate] [--latency 0.02]

What it does, as Twilio does:

* ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP basic auth: the user and
  password must be the emulator's account SID and auth token and the SID in the path must be
  the authenticated account, else ``401`` / code 20003.
* Every request is validated against Twilio's own OpenAPI document
  (``tests/emulators/specs/twilio_messages_v2010.json``, or ``$HERALD_PROVIDER_SPECS``) with
  openapi-core; a mismatch is recorded in :attr:`spec_errors` and answered ``400``. Its own
  ``201`` answers are validated against the spec's response schema too.
* The checks the spec cannot express: ``To`` in E.164 (21211), a sender (21603), a body
  (21602), at most 1,600 characters (21617), and Twilio's test "magic numbers"
  (+15005550001 → 21211, …0002 → 21612, …0003 → 21408, …0004 → 21610, …0009 → 21614).
* ``201`` with a message resource shaped like the spec's examples.

Control: :meth:`fail_next` / :meth:`set_latency` / :meth:`reset` from Python, or the same over
HTTP under ``/_emulator/`` (``POST fail``, ``POST latency``, ``POST reset``, ``GET requests``,
``GET spec-errors``) for an emulator in another process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from openapi_core import OpenAPI, testing

from tests.emulators import specs_dir

SPEC_FILE = "twilio_messages_v2010.json"
REAL_HOST = "https://api.twilio.com"
DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "emulator-auth-token-0123456789ab"

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")

#: Twilio's test-credential magic ``To`` numbers and the error each one triggers.
MAGIC_NUMBERS: dict[str, tuple[int, str]] = {
    "+15005550001": (21211, "The 'To' number {to} is not a valid phone number."),
    "+15005550002": (
        21612,
        "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number",
    ),
    "+15005550003": (
        21408,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}.",
    ),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number {to} is not a valid mobile number"),
}



@functools.cache
def load_spec() -> OpenAPI:
    path = specs_dir() / SPEC_FILE
    if not path.is_file():
        # A missing spec must fail the tests, never skip them.
        raise FileNotFoundError(f"Twilio OpenAPI spec not found at {path}; set HERALD_PROVIDER_SPECS")
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
    """One scripted answer: a Twilio error, a delay, or a dropped connection."""

    status: int = 500
    code: int | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection after reading the request, answer nothing


#: The documented error answers, by name: (status, Twilio code, message).
FAULT_KINDS: dict[str, tuple[int, int | None, str]] = {
    "rate_limited": (429, 20429, "Too Many Requests"),
    "server_error": (500, 20500, "Internal Server Error"),
    "unavailable": (503, 20503, "Service Unavailable"),
    "invalid_number": (400, 21211, "The 'To' number is not a valid phone number."),
    "unreachable": (400, 21612, "The 'To' phone number is not currently reachable via SMS."),
    "not_mobile": (400, 21614, "'To' number is not a valid mobile number"),
    "unsubscribed": (400, 21610, "Attempt to send to unsubscribed recipient"),
    "unauthorized": (401, 20003, "Authenticate"),
    "unverified": (
        400,
        21608,
        "The number is unverified. Trial accounts may only send messages to verified numbers.",
    ),
    "bad_request": (400, 21602, "Message body is required."),
    "body_too_long": (400, 21617, "The concatenated message body exceeds the 1600 character limit."),
    "region_not_enabled": (400, 21408, "Permission to send an SMS has not been enabled for the region."),
}


@dataclass(slots=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str]
    at: float
    answered: int | None = None
    peer: str | None = None  # client address: the same one for requests on a kept-alive connection

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["body"] = self.body.decode("utf-8", "replace")
        return data


def _error_body(status: int, code: int | None, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
        "status": status,
    }


class TwilioEmulator:
    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        validate: bool = True,
        latency: float = 0.0,
        max_recorded: int | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.validate = validate
        self.latency = latency
        # A long-running emulator (benchmarks) keeps only the latest requests.
        self.max_recorded = max_recorded
        self.spec = load_spec() if validate else None
        self.requests: list[ReceivedRequest] = []
        self.spec_errors: list[str] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self._faults: deque[Fault] = deque()
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def _record(self, record: ReceivedRequest) -> None:
        self.requests.append(record)
        limit = self.max_recorded
        if limit is not None and len(self.requests) > 2 * limit:
            del self.requests[:-limit]
            for sid in list(self.messages)[:-limit]:
                del self.messages[sid]

    # Control ---------------------------------------------------------------------------------

    def fail_next(
        self,
        kind: str = "server_error",
        count: int = 1,
        *,
        status: int | None = None,
        code: int | None = None,
        message: str | None = None,
        retry_after: float | str | None = None,
        delay: float = 0.0,
        drop: bool = False,
    ) -> None:
        """Answer the next ``count`` sends with ``kind`` (a :data:`FAULT_KINDS` name,
        ``"timeout"`` (needs ``delay``), ``"drop"``, or ``"custom"`` with ``status``/``code``)."""
        if kind == "drop":
            drop = True
        elif kind in ("timeout", "custom"):
            pass
        elif kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        d_status, d_code, d_message = FAULT_KINDS.get(kind, (status or 500, code, message or "error"))
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        fault = Fault(
            status=status if status is not None else d_status,
            code=code if code is not None else d_code,
            message=message if message is not None else d_message,
            headers=headers,
            delay=delay,
            drop=drop,
        )
        if kind == "timeout":
            fault.status = 0  # no answer of its own: only the delay, then success
        self._faults.extend(Fault(**asdict(fault)) for _ in range(count))

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    def reset(self) -> None:
        self.requests.clear()
        self.spec_errors.clear()
        self.messages.clear()
        self._faults.clear()
        self.latency = 0.0

    @property
    def sent(self) -> list[ReceivedRequest]:
        """The send requests that were accepted (answered 201)."""
        return [r for r in self.requests if r.answered == 201]

    # Server ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self._create_message)
        app.router.add_get("/2010-04-01/Accounts/{account}/Messages/{sid}.json", self._fetch_message)
        app.router.add_post("/_emulator/fail", self._control_fail)
        app.router.add_post("/_emulator/latency", self._control_latency)
        app.router.add_post("/_emulator/reset", self._control_reset)
        app.router.add_get("/_emulator/requests", self._control_requests)
        app.router.add_get("/_emulator/spec-errors", self._control_spec_errors)
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

    # Twilio's API ----------------------------------------------------------------------------

    def _authenticated(self, request: web.Request, account: str) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), self.account_sid.encode())
        ok_password = hmac.compare_digest(password.encode(), self.auth_token.encode())
        return ok_user and ok_password and account == self.account_sid

    def _validate(self, request: web.Request, body: bytes) -> list[str]:
        if self.spec is None:
            return []
        mock = testing.MockRequest(
            REAL_HOST,
            request.method,
            request.path,
            args=dict(request.query),
            headers=dict(request.headers),
            data=body,
            content_type=request.content_type,
        )
        return [describe_validation_error(e) for e in self.spec.iter_request_errors(mock)]

    def _answer(
        self, record: ReceivedRequest, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> web.Response:
        record.answered = status
        return web.Response(
            status=status, body=json.dumps(payload).encode(), content_type="application/json", headers=headers
        )

    def _error(
        self,
        record: ReceivedRequest,
        status: int,
        code: int | None,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        return self._answer(record, status, _error_body(status, code, message), headers)

    async def _create_message(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        record = ReceivedRequest(request.method, request.path, dict(request.headers), body, form, time.time())
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

        account = request.match_info["account"]
        if not self._authenticated(request, account):
            return self._error(
                record, 401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        if problems:
            return self._error(
                record, 400, None, "emulator: request does not match the Twilio OpenAPI spec: " + problems[0]
            )
        if fault is not None and fault.status:
            return self._error(record, fault.status, fault.code, fault.message, fault.headers)

        to = form.get("To", "")
        if not _E164.match(to):
            return self._error(record, 400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to in MAGIC_NUMBERS:
            code, text = MAGIC_NUMBERS[to]
            return self._error(record, 400, code, text.format(to=to))
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return self._error(record, 400, 21603, "A 'From' phone number is required.")
        text = form.get("Body", "")
        if not text and not form.get("MediaUrl") and not form.get("ContentSid"):
            return self._error(record, 400, 21602, "Message body is required.")
        if len(text) > 1600:
            return self._error(
                record, 400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )

        message = self._message_resource(form)
        self.messages[message["sid"]] = {"resource": message, "form": form}
        self._check_response(request, body, 201, message)
        return self._answer(record, 201, message)

    def _message_resource(self, form: dict[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = formatdate(usegmt=True).replace("GMT", "+0000")
        service = form.get("MessagingServiceSid")
        text = form.get("Body", "")
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": text,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": str(max(1, -(-len(text) // 153))) if len(text) > 160 else "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service else "queued",
            "subresource_uris": {"media": f"{base}/Media.json"},
            "to": form.get("To"),
            "uri": f"{base}.json",
        }

    def _check_response(self, request: web.Request, body: bytes, status: int, payload: Any) -> None:
        if self.spec is None:
            return
        mock_request = testing.MockRequest(
            REAL_HOST,
            request.method,
            request.path,
            headers=dict(request.headers),
            data=body,
            content_type=request.content_type,
        )
        mock_response = testing.MockResponse(json.dumps(payload).encode(), status_code=status)
        for error in self.spec.iter_response_errors(mock_request, mock_response):
            self.spec_errors.append(f"response {status}: {describe_validation_error(error)}")

    async def _fetch_message(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        record = ReceivedRequest(request.method, request.path, dict(request.headers), b"", {}, time.time())
        if not self._authenticated(request, account):
            return self._error(record, 401, 20003, "Authenticate")
        stored = self.messages.get(request.match_info["sid"])
        if stored is None:
            return self._error(record, 404, 20404, f"The requested resource {request.path} was not found")
        return self._answer(record, 200, stored["resource"])

    # Status callbacks (Twilio → herald) --------------------------------------------------------

    def status_callback(
        self, sid: str, status: str, *, error_code: str | None = None
    ) -> tuple[str, dict[str, str], str]:
        """The (url, form, X-Twilio-Signature) Twilio would POST for message ``sid``."""
        stored = self.messages[sid]
        form = stored["form"]
        url = form.get("StatusCallback")
        if not url:
            raise ValueError(f"message {sid} was sent without a StatusCallback")
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "From": form.get("From") or "",
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "To": form.get("To", ""),
        }
        if form.get("MessagingServiceSid"):
            params["MessagingServiceSid"] = form["MessagingServiceSid"]
        if error_code is not None:
            params["ErrorCode"] = error_code
        data = url + "".join(k + params[k] for k in sorted(params))
        digest = hmac.new(self.auth_token.encode(), data.encode(), hashlib.sha1).digest()
        return url, params, base64.b64encode(digest).decode()

    async def post_status_callback(self, sid: str, status: str, *, error_code: str | None = None) -> int:
        """POST the signed status callback to herald, as Twilio does; return the HTTP status."""
        url, params, signature = self.status_callback(sid, status, error_code=error_code)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url, data=params, headers={"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"}
            ) as response,
        ):
            return response.status

    # Control endpoints -----------------------------------------------------------------------

    async def _control_fail(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            self.fail_next(
                data.get("kind", "server_error"),
                int(data.get("count", 1)),
                status=data.get("status"),
                code=data.get("code"),
                message=data.get("message"),
                retry_after=data.get("retry_after"),
                delay=float(data.get("delay", 0.0)),
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Twilio Messages API emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8701)
    parser.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--no-validate", action="store_true", help="skip OpenAPI validation (benchmarks)")
    args = parser.parse_args(argv)
    emulator = TwilioEmulator(
        args.account_sid,
        args.auth_token,
        validate=not args.no_validate,
        latency=args.latency,
        max_recorded=10_000,
    )
    print(f"twilio emulator on http://{args.host}:{args.port} account {args.account_sid}", flush=True)
    web.run_app(emulator.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
