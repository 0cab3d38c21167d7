"""No secret in the log (issue 17, part 4), in both log formats.

herald runs as `herald serve` does (tests/support/faulty_serve.py adds one induced failure)
with EVERY provider configured with known credentials; a user with an email, a phone, push
devices with full tokens, a user token; a normal send (email delivered, the other channels
failing against closed ports, so that their error paths log too) and an unhandled error. The
log then holds none of the credentials, neither the API key nor the user token nor a full
push token, no unmasked phone or email, no traceback; the error is one line with the error id
the 500 answered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.net import free_port
from tests.support.process import herald_cli
from tests.support.smtp import SmtpTestServer
from tests.support.stack import CURRENT

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EMAIL = "ann.secretive@example.com"
PHONE = "+33612345678"
APNS_TOKEN = "a1b2c3d4" * 8  # 64 hex characters
FCM_TOKEN = "fcmToken_" + "Zq9" * 50


def _pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
    )


def _secrets() -> dict[str, str]:
    vapid = ec.generate_private_key(ec.SECP256R1())
    import base64

    raw_vapid = base64.urlsafe_b64encode(vapid.private_numbers().private_value.to_bytes(32, "big"))
    return {
        "smtp": "smtp-pass-Qx81vLr0",
        "auth": "auth-secret-9d8c7b6a5f4e3d2c",
        "sendgrid": "SG.sendgridkey-Wp3o2i1u.Ytr5e4w3q2",
        "ses_secret": "ses-secret-Kd93jf8Hs72kLq",
        "ses_session": "ses-session-Pm28dn4Ks93lLz",
        "twilio": "twilio-token-f3e2d1c0b9a8",
        "fcm_pem": _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "apns_pem": _pem(ec.generate_private_key(ec.SECP256R1())),
        "vapid": raw_vapid.decode().rstrip("="),
        "webhook": "whsec-current-Jd82kf9Ls0",
        "webhook_old": "whsec-previous-Mz72nd0Qp1",
    }


def _toml(tmp: Path, smtp_port: int, s: dict[str, str], *, json_logs: bool) -> str:
    closed = f"http://127.0.0.1:{free_port()}"
    return f"""
[database]
url = "{CURRENT.database_url(tmp)}"

[queue]
lease_seconds = 2
idle_wait_seconds = 0.2

[auth]
secret = "{s["auth"]}"

[logging]
level = "info"
json = {"true" if json_logs else "false"}

[retry]
schedule = [0, 0.5, 0.5]

[providers.smtp]
host = "127.0.0.1"
port = {smtp_port}
from_address = "noreply@herald.test"
password = "{s["smtp"]}"
timeout = 5

[providers.sendgrid]
api_key = "{s["sendgrid"]}"
from_email = "noreply@herald-mail.net"
base_url = "{closed}"

[providers.ses]
region = "eu-west-1"
access_key_id = "AKIAHERALDTEST"
secret_access_key = "{s["ses_secret"]}"
session_token = "{s["ses_session"]}"
from_address = "noreply@herald.test"
endpoint_url = "{closed}"

[providers.twilio]
account_sid = "AC{"0123456789abcdef" * 2}"
auth_token = "{s["twilio"]}"
from_number = "+15005550006"
base_url = "{closed}"
timeout = 2

[providers.fcm]
base_url = "{closed}"
timeout = 2

[providers.fcm.service_account]
project_id = "herald-test"
client_email = "herald@herald-test.iam.gserviceaccount.com"
private_key = '''{s["fcm_pem"]}'''
token_uri = "{closed}/token"

[providers.apns]
team_id = "TEAM123456"
key_id = "KEY1234567"
private_key = '''{s["apns_pem"]}'''
topic = "com.example.herald"
base_url = "{closed}"
timeout = 2

[providers.webpush]
vapid_private_key = "{s["vapid"]}"
vapid_subject = "mailto:ops@herald.test"
allow_private = true
timeout = 2

[providers.webhook]
signing_secret = "{s["webhook"]}"
previous_signing_secrets = ["{s["webhook_old"]}"]
allow_private = true
timeout = 2

[providers.chat]
allow_private = true

[channels.email]
providers = ["smtp", "sendgrid", "ses"]

[channels.sms]
providers = ["twilio"]

[channels.push]
providers = ["fcm", "apns", "webpush"]

[channels.webhook]
providers = ["webhook"]

[channels.chat]
providers = ["chat"]
"""


def _forbidden(s: dict[str, str], api_key: str, user_token: str) -> dict[str, str]:
    out = {name: value for name, value in s.items() if not name.endswith("_pem")}
    for name in ("fcm_pem", "apns_pem"):  # every line of the key's body
        for i, line in enumerate(s[name].splitlines()[1:-1]):
            out[f"{name}[{i}]"] = line
    out |= {
        "api_key": api_key,
        "api_key_body": api_key.removeprefix("hk_"),
        "user_token": user_token,
        "user_token_body": user_token.removeprefix("ut_"),
        "apns_token": APNS_TOKEN,
        "fcm_token": FCM_TOKEN,
        "email": EMAIL,
        "email_local_part": EMAIL.split("@")[0],
        "phone": PHONE,
        "phone_digits": PHONE[1:],
    }
    return out


@pytest.mark.parametrize("json_logs", [False, True], ids=["console", "json"])
def test_no_secret_reaches_the_log(tmp_path: Path, smtp_server: SmtpTestServer, json_logs: bool) -> None:
    s = _secrets()
    (tmp_path / "herald.toml").write_text(_toml(tmp_path, smtp_server.port, s, json_logs=json_logs))
    created = herald_cli(tmp_path, "keys", "create", "--scope", "admin")
    api_key = created.stdout.strip()
    assert api_key.startswith("hk_"), created.stderr
    port = free_port()
    log_path = tmp_path / "herald.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.faulty_serve", "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90  # a loaded machine starts slowly
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "herald did not start"
            time.sleep(0.1)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as c:
            r = c.put("/v1/users/u1", json={"email": EMAIL, "phone": PHONE})
            assert r.status_code == 200, r.text
            for kind, token in (("apns", APNS_TOKEN), ("fcm", FCM_TOKEN)):
                r = c.post("/v1/users/u1/devices", json={"kind": kind, "token": token})
                assert r.status_code == 201, r.text
            r = c.post("/v1/users/u1/token", json={})
            assert r.status_code == 200, r.text
            user_token = r.json()["token"]
            r = httpx.get(f"{base}/v1/users/u1/inbox", headers={"Authorization": f"Bearer {user_token}"})
            assert r.status_code == 200, r.text
            # A wrong key and a wrong user token: refused, and not logged either.
            assert (
                c.get("/v1/users/u1", headers={"Authorization": "Bearer hk_wrongwrongwrong"}).status_code
                == 401
            )
            r = c.post(
                "/v1/notifications",
                json={
                    "to": "u1",
                    "channels": ["email", "sms", "push"],
                    "content": {
                        "email": {"subject": "Hello", "text": "Your code is 1234"},
                        "sms": {"text": "Your code is 1234"},
                        "push": {"title": "Hello", "body": "Your code is 1234"},
                    },
                },
            )
            assert r.status_code == 202, r.text
            notification_id = r.json()["id"]
            # The induced unhandled error: a 500 problem+json that carries an error id.
            r = c.get("/v1/users/boom")
            assert r.status_code == 500
            assert r.headers["content-type"] == "application/problem+json"
            error_id = r.json()["error_id"]
            assert error_id in r.json()["detail"]
            # The send: email delivered, the other channels tried (and logged) against closed ports.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                body = c.get(f"/v1/notifications/{notification_id}").json()
                attempted = [
                    d for d in body.get("deliveries", []) if d["attempt_count"] or d["status"] != "queued"
                ]
                if len(smtp_server.handler.received) == 1 and len(attempted) >= 3:
                    break
                time.sleep(0.2)
            assert len(smtp_server.handler.received) == 1
    finally:
        proc.terminate()
        proc.wait(20)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    lines = log.splitlines()
    print(f"\nlog ({'json' if json_logs else 'console'}): {len(lines)} lines, {len(log)} bytes")
    leaks = {name: value for name, value in _forbidden(s, api_key, user_token).items() if value in log}
    assert leaks == {}, {name: [ln[:300] for ln in lines if v in ln][:3] for name, v in leaks.items()}
    assert "Traceback" not in log and "BEGIN PRIVATE KEY" not in log
    error_lines = [ln for ln in lines if error_id in ln]
    assert [ln for ln in lines if "RuntimeError" in ln] == error_lines  # logged once, not twice
    assert len(error_lines) == 1, error_lines  # one unhandled error = one line
    assert "RuntimeError" in error_lines[0] and len(error_lines[0]) < 4000
    assert "e***@example.com" not in log  # sanity: the masking keeps the first character
    assert "a***@example.com" in log or EMAIL not in log
    if json_logs:
        for ln in lines:
            if ln.startswith("{"):
                json.loads(ln)  # every event is one JSON document on one line
