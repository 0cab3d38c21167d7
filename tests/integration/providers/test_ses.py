"""The SES v2 provider: the body against botocore's model, real sends to moto in server mode,
and SES's error answers from the SES stub (tests/emulators/ses.py), which speaks SES's rest-json
error shape."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

import boto3
import botocore.auth
import botocore.serialize
import botocore.session
import botocore.validate
import pytest
import structlog
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.server import ThreadedMotoServer

from herald.adapters.providers.ses import (
    DELIVERY_TAG,
    SesConfig,
    SesProvider,
    build_params,
    to_json,
)
from herald.domain.errors import PermanentDeliveryError, ProviderConfigError, TransientDeliveryError
from herald.domain.models import OutboundMessage, Priority
from tests.emulators.ses import MESSAGE_ID, SesEmulator, ses_error
from tests.support.net import free_port

REGION = "us-east-1"
SENDER = "noreply@herald.example"
ACCESS_KEY = "AKIDHERALDTEST0000"
SECRET_KEY = "herald/secret/key/for/tests/only/0000"


def _message(**kw: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "delivery_id": "dlv_01hsestest",
        "notification_id": "ntf_01hsestest",
        "user_id": "user-7",
        "channel": "email",
        "address": "ada@example.org",
        "content": {"subject": "Your invoice", "text": "Total: 12 €", "html": "<p>Total: <b>12 €</b></p>"},
        "category": "transactional",
        "priority": Priority.HIGH,
        "attempt": 1,
    }
    values.update(kw)
    return OutboundMessage(**values)


def _config(endpoint: str, **kw: Any) -> SesConfig:
    values: dict[str, Any] = {
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "endpoint_url": endpoint,
        "from_address": SENDER,
        "from_name": "Herald Billing",
        "timeout": 2.0,
    }
    values.update(kw)
    return SesConfig(**values)


# The request body against botocore's model ------------------------------------------------------

CASES = {
    "simple": _message(),
    "text only": _message(content={"subject": "Hi", "text": "plain"}),
    "html only": _message(content={"subject": "Hi", "html": "<p>rich</p>"}),
    "raw with unsubscribe": _message(
        unsubscribe_url="https://herald.example/u/tok123", category="news letter!"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("configuration_set", [None, "herald-events"])
def test_body_is_valid_sesv2_send_email_input(name: str, configuration_set: str | None) -> None:
    config = _config("https://email.us-east-1.amazonaws.com", configuration_set=configuration_set)
    params = build_params(config, CASES[name])
    op = botocore.session.get_session().get_service_model("sesv2").operation_model("SendEmail")

    report = botocore.validate.ParamValidator().validate(params, op.input_shape)
    assert not report.has_errors(), report.generate_report()

    # The JSON we send is byte-for-byte what botocore would serialise, modulo key order.
    serializer = botocore.serialize.create_serializer("rest-json", include_validation=True)
    reference = serializer.serialize_to_request(params, op)
    assert reference["url_path"] == "/v2/email/outbound-emails"
    assert reference["method"] == "POST"
    assert json.loads(to_json(params)) == json.loads(reference["body"])

    tags = {t["Name"]: t["Value"] for t in params["EmailTags"]}
    assert tags[DELIVERY_TAG] == "dlv_01hsestest"
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,256}", v) for v in tags.values())
    assert params.get("ConfigurationSetName") == configuration_set
    if name == "raw with unsubscribe":
        mime = email.message_from_bytes(params["Content"]["Raw"]["Data"], policy=email.policy.default)
        assert mime["List-Unsubscribe"] == "<https://herald.example/u/tok123>"
        assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert b"\r\n" in params["Content"]["Raw"]["Data"]
        params["Content"]["Raw"]["Data"].decode("ascii")  # 7-bit: non-ASCII text is encoded
    else:
        assert "Simple" in params["Content"]


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="go together"):
        SesConfig(region=REGION, access_key_id=ACCESS_KEY, from_address=SENDER)
    with pytest.raises(ValueError, match="region"):
        SesConfig(region="nowhere", from_address=SENDER)
    config = _config("http://x")
    assert SECRET_KEY not in repr(config)
    assert SesConfig(region="eu-west-1", from_address=SENDER).url == (
        "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
    )


# moto in server mode ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "sesv2",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_email_identity(EmailIdentity=SENDER)
    yield endpoint
    server.stop()


def _moto_ses_state(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=5) as resp:
        state: dict[str, Any] = json.load(resp)["ses"]
        return state


async def test_send_simple_to_moto(moto_endpoint: str) -> None:
    provider = SesProvider(_config(moto_endpoint))
    try:
        receipt = await provider.send(_message())
    finally:
        await provider.close()
    assert receipt.code == "200"
    assert receipt.provider_message_id
    state = await asyncio.to_thread(_moto_ses_state, moto_endpoint)
    stored = [m for m in state["Message"] if m["id"] == receipt.provider_message_id]
    assert len(stored) == 1
    assert stored[0]["subject"] == "Your invoice"
    assert stored[0]["destinations"] == {"ToAddresses": ["ada@example.org"]}
    assert stored[0]["source"] == f"Herald Billing <{SENDER}>"


async def test_send_raw_with_list_unsubscribe_to_moto(moto_endpoint: str) -> None:
    provider = SesProvider(_config(moto_endpoint, from_name=None))
    try:
        receipt = await provider.send(_message(unsubscribe_url="https://herald.example/u/tok456"))
    finally:
        await provider.close()
    state = await asyncio.to_thread(_moto_ses_state, moto_endpoint)
    stored = [m for m in state["RawMessage"] if m["id"] == receipt.provider_message_id]
    assert len(stored) == 1
    mime = email.message_from_string(stored[0]["raw_data"], policy=email.policy.default)
    assert mime["List-Unsubscribe"] == "<https://herald.example/u/tok456>"
    assert mime["X-Herald-Delivery-Id"] == "dlv_01hsestest"
    assert mime["To"] == "ada@example.org"
    text = mime.get_body(("plain",))
    assert text is not None and text.get_content().strip() == "Total: 12 €"


async def test_an_unverified_sender_of_ours_is_a_configuration_error(moto_endpoint: str) -> None:
    """SES answers MessageRejected; the identity that failed is herald's own sender, so the
    user's address is not at fault: configuration error (hold, alert), never permanent."""
    provider = SesProvider(_config(moto_endpoint, from_address="stranger@unverified.example"))
    try:
        with pytest.raises(ProviderConfigError) as info:
            await provider.send(_message())
    finally:
        await provider.close()
    assert type(info.value) is ProviderConfigError
    assert info.value.code == "MessageRejected"
    assert "not verified" in info.value.detail


# SES error answers from a stub ------------------------------------------------------------------


@pytest.fixture
async def stub() -> AsyncIterator[SesEmulator]:
    emulator = SesEmulator()  # no signature check: the credential chain test signs with other keys
    await emulator.start()
    yield emulator
    await emulator.stop()


ERRORS = [
    (429, "TooManyRequestsException", TransientDeliveryError),
    (400, "ThrottlingException", TransientDeliveryError),
    (400, "LimitExceededException", TransientDeliveryError),
    (500, "InternalFailure", TransientDeliveryError),
    (503, "ServiceUnavailable", TransientDeliveryError),
    (400, "MessageRejected", PermanentDeliveryError),
    (400, "BadRequestException", PermanentDeliveryError),
    (400, "AccountSuspendedException", ProviderConfigError),
    (400, "SendingPausedException", ProviderConfigError),
    (400, "MailFromDomainNotVerifiedException", ProviderConfigError),
    (404, "NotFoundException", ProviderConfigError),
    (403, "AccessDeniedException", ProviderConfigError),
    (403, "InvalidSignatureException", ProviderConfigError),
    (403, "UnrecognizedClientException", ProviderConfigError),
]


@pytest.mark.parametrize(("status", "name", "error"), ERRORS)
async def test_error_classification(
    stub: SesEmulator, status: int, name: str, error: type[Exception]
) -> None:
    stub.answers.append(ses_error(status, name, f"{name} says no"))
    provider = SesProvider(_config(stub.url))
    try:
        with pytest.raises(error) as info:
            await provider.send(_message())
    finally:
        await provider.close()
    exc = info.value
    assert type(exc) is error
    assert getattr(exc, "code", None) == name
    assert f"{name} says no" in str(exc)


# What SES says, word for word, when the problem is herald's account, identity or credentials.
OUR_SETUP = [
    (
        400,
        "MessageRejected",
        "Email address is not verified. The following identities failed the check "
        "in region US-EAST-1: noreply@herald.example",
    ),
    (
        400,
        "MessageRejected",
        "Email address is not verified. The following identities failed the check "
        "in region EU-WEST-1: ada@example.org",
    ),  # the recipient, while the account is in the sandbox
    (400, "BadRequestException", "Configuration set <transactional> does not exist."),
    (400, "NotFoundException", "Configuration set transactional does not exist."),
    (403, "ExpiredTokenException", "The security token included in the request is expired"),
    (400, "ExpiredToken", "The security token included in the request is expired"),
    (
        403,
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/herald is not authorized to "
        "perform: ses:SendEmail on resource: arn:aws:ses:us-east-1:123456789012:identity/herald.example",
    ),
    (400, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
]


@pytest.mark.parametrize(("status", "name", "message"), OUR_SETUP)
async def test_problems_of_our_setup_are_configuration_errors(
    stub: SesEmulator, status: int, name: str, message: str
) -> None:
    stub.answers.append(ses_error(status, name, message))
    provider = SesProvider(_config(stub.url))
    try:
        with pytest.raises(ProviderConfigError) as info:
            await provider.send(_message())
    finally:
        await provider.close()
    assert info.value.code == name


@pytest.mark.parametrize(
    "message",
    ["Illegal address", "Missing final '@domain'", "Local address contains control or whitespace"],
)
async def test_a_bad_recipient_address_stays_permanent(stub: SesEmulator, message: str) -> None:
    stub.answers.append(ses_error(400, "MessageRejected", message))
    provider = SesProvider(_config(stub.url))
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            await provider.send(_message())
    finally:
        await provider.close()
    assert type(info.value) is PermanentDeliveryError


async def test_error_from_the_body_type_and_retry_after(stub: SesEmulator) -> None:
    stub.answers.append(
        (429, {"Retry-After": "12"}, b'{"__type": "com.amazonaws.sesv2#TooManyRequestsException"}')
    )
    stub.answers.append((403, {}, b"<html>not json</html>"))
    provider = SesProvider(_config(stub.url))
    try:
        with pytest.raises(TransientDeliveryError) as throttled:
            await provider.send(_message())
        with pytest.raises(ProviderConfigError) as denied:
            await provider.send(_message())
    finally:
        await provider.close()
    assert throttled.value.code == "TooManyRequestsException"
    assert throttled.value.retry_after == 12.0
    assert denied.value.code == "HTTP403"


async def test_request_is_sigv4_signed_by_botocore(stub: SesEmulator) -> None:
    provider = SesProvider(_config(stub.url, session_token="session-token-for-tests"))
    try:
        with structlog.testing.capture_logs() as logs:
            receipt = await provider.send(_message())
    finally:
        await provider.close()
    assert receipt.provider_message_id == MESSAGE_ID
    path, headers, body = stub.requests[0]
    assert path == "/v2/email/outbound-emails"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Amz-Security-Token"] == "session-token-for-tests"
    auth = headers["Authorization"]
    match = re.fullmatch(
        rf"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/(\d{{8}})/{REGION}/ses/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        auth,
    )
    assert match, auth
    assert match.group(1) == headers["X-Amz-Date"][:8]
    assert {"host", "x-amz-date", "content-type", "x-amz-security-token"} <= set(match.group(2).split(";"))

    # What SES does on receipt: sign the received request again and compare.
    when = datetime.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    again = AWSRequest(
        method="POST", url=stub.url + path, data=body, headers={"Content-Type": headers["Content-Type"]}
    )
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, "session-token-for-tests"), "ses", REGION).add_auth(
            again
        )
    assert again.headers["Authorization"] == auth
    assert json.loads(body)["FromEmailAddress"] == f"Herald Billing <{SENDER}>"

    logged = repr(logs)
    assert SECRET_KEY not in logged and "session-token-for-tests" not in logged
    assert "ada@example.org" not in logged


async def test_default_credential_chain(
    stub: SesEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-environment")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    provider = SesProvider(_config(stub.url, access_key_id=None, secret_access_key=None))
    try:
        await provider.send(_message())
    finally:
        await provider.close()
    assert "Credential=AKIDFROMENVIRONMENT/" in stub.requests[0][1]["Authorization"]


async def test_herald_holds_the_channel_alerts_and_reports_unready_for_an_unverified_sender(
    moto_endpoint: str, tmp_path: Any
) -> None:
    """The whole path, against moto: the delivery is held (not failed, no retry budget spent),
    ops get an alert, /readyz names SES as unhealthy, and the user's address is not suppressed."""
    from tests.support.alerts import AlertSink
    from tests.support.herald import make_settings, running_herald
    from tests.support.waits import add_user, send, wait_status

    sink = AlertSink()
    await sink.start()
    ses = {
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "endpoint_url": moto_endpoint,
        "from_address": "stranger@unverified.example",
        "timeout": 5,
    }
    settings = make_settings(
        tmp_path,
        providers={"ses": ses},
        channels={"email": {"providers": ["ses"]}},
        alerts={"webhook_url": sink.url},
    )
    try:
        async with running_herald(settings) as h:
            await add_user(h, email="ada@example.org")
            nid = await send(h)
            d = await wait_status(h, nid, "retrying", attempts=1)
            assert d["attempts"][0]["outcome"] == "config_error", d
            assert d["reason"] == "provider_config_error" and d["attempts"][0]["code"] == "MessageRejected"
            ready = (await h.client.get("/readyz")).json()
            assert ready["unhealthy_providers"]["ses"]["reason"] == "config_error", ready
            for _ in range(500):
                if sink.received:
                    break
                await asyncio.sleep(0.02)
            assert sink.received and sink.received[0]["alert"] == "provider_config_error"
            assert await h.container.store.suppressed("email", ["ada@example.org"]) == set()
            assert (await h.client.get("/v1/dead-letters")).json()["items"] == []
    finally:
        await sink.stop()
