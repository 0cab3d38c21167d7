"""A small SES v2 ``SendEmail`` endpoint that answers in SES's rest-json shape.

Real sends go to moto in server mode (``tests/integration/providers/test_ses.py``); this stub is
for what moto does not say: SES's error answers, delays, and a signature check.

* ``POST /v2/email/outbound-emails`` → ``200 {"MessageId": ...}``, every request recorded in
  :attr:`requests` as ``(path, headers, body)``.
* :attr:`answers`: scripted answers ``(status, headers, body)`` for the next requests;
  :func:`ses_error` builds SES's error answer (``x-amzn-ErrorType`` and a JSON ``message``).
* :attr:`delay`: every answer waits that long, after the whole request was read.
* With :attr:`credentials` (access key id → secret key) the SigV4 signature is checked as SES
  does, by signing the received request again with botocore: an unknown key id is ``403
  UnrecognizedClientException``, a wrong signature ``403 InvalidSignatureException``. Without
  it, any signature passes (the default credential chain tests use keys the stub cannot know).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
from dataclasses import dataclass, field
from unittest import mock

import botocore.auth
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

PATH = "/v2/email/outbound-emails"
MESSAGE_ID = "0100018f-stub-message-id"
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/\d{8}/(?P<region>[^/]+)/ses/aws4_request, "
    r"SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}"
)

Answer = tuple[int, dict[str, str], bytes]


def ses_error(status: int, name: str, message: str, **headers: str) -> Answer:
    """SES v2's error answer: the type in ``x-amzn-ErrorType`` and a JSON ``message``."""
    return (
        status,
        {
            "x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazonaws.sesv2/",
            "x-amzn-RequestId": "5d7c0a1e-0000-4000-8000-000000000000",
            "Content-Type": "application/json",
            **headers,
        },
        json.dumps({"message": message}).encode(),
    )


@dataclass
class SesEmulator:
    credentials: dict[str, str] | None = None
    url: str = ""
    answers: list[Answer] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    delay: float = 0.0
    _runner: web.AppRunner | None = None

    def fail_next(self, status: int, name: str, message: str | None = None, **headers: str) -> None:
        self.answers.append(ses_error(status, name, message or f"{name} says no", **headers))

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post(PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server) and server.sockets  # narrowing for the bound socket
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        self.requests.append((request.path, headers, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        refused = self._check_signature(headers, body)
        if refused is not None:
            status, answer_headers, payload = refused
        elif self.answers:
            status, answer_headers, payload = self.answers.pop(0)
        else:
            return web.json_response({"MessageId": MESSAGE_ID})
        return web.Response(status=status, headers=answer_headers, body=payload)

    def _check_signature(self, headers: dict[str, str], body: bytes) -> Answer | None:
        if self.credentials is None:
            return None
        match = _AUTH.fullmatch(headers.get("Authorization", ""))
        if match is None:
            return ses_error(403, "IncompleteSignatureException", "Authorization header is malformed")
        secret = self.credentials.get(match["key"])
        if secret is None:
            return ses_error(
                403, "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        when = datetime.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        again = AWSRequest(
            method="POST", url=self.url + PATH, data=body, headers={"Content-Type": headers["Content-Type"]}
        )
        token = headers.get("X-Amz-Security-Token")
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
            SigV4Auth(Credentials(match["key"], secret, token), "ses", match["region"]).add_auth(again)
        if again.headers["Authorization"] != headers["Authorization"]:
            return ses_error(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None
