"""Log masking (herald/redact.py) and one-line exceptions (herald/logs.py)."""

from __future__ import annotations

import io
import json
import logging

import structlog
from pydantic import SecretStr

from herald import logs
from herald.config import MaskedTable
from herald.redact import redact_event, redact_text, register_secrets


def test_phones_emails_and_tokens_are_masked() -> None:
    assert redact_text("call +33612345678 now") == "call +33*******78 now"
    assert redact_text("mail ann.smith@example.com") == "mail a***@example.com"
    assert redact_text("Authorization: Bearer abc.def.ghi") == "Authorization: Bearer ***"
    assert "hk_" + "x" * 20 not in redact_text("key hk_" + "x" * 20)
    assert (
        redact_text("https://user:pw123456@host/x?token=abcdef&b=1")
        == "https://user:***@host/x?token=***&b=1"
    )
    apns = "ab12" * 16
    assert apns not in redact_text(f"device {apns}")


def test_secret_keys_and_registered_secrets() -> None:
    register_secrets([SecretStr("registered-secret-value"), {"nested": ["another-secret-1"]}])
    event = redact_event(
        {
            "event": "x failed with registered-secret-value and another-secret-1",
            "password": "p",
            "api_key": "k",
            "token": "t" * 40,
            "count": 3,
        }
    )
    assert "registered-secret-value" not in event["event"] and "another-secret-1" not in event["event"]
    assert event["password"] == "***" and event["api_key"] == "***" and event["count"] == 3
    assert event["token"] == "tttt…tttt"


def test_raw_provider_tables_print_masked() -> None:
    table = MaskedTable({"auth_token": "tw-secret", "account_sid": "AC1", "private_key": "pem"})
    assert "tw-secret" not in repr(table) and "pem" not in str(table) and "AC1" in repr(table)
    assert table["auth_token"] == "tw-secret"  # the provider still reads its value


def _boom(secret: str) -> None:
    local_secret = secret  # a traceback with locals would print this
    raise RuntimeError("failed " + local_secret[:2])


def test_an_exception_is_one_line_without_locals_in_both_formats() -> None:
    for json_logs in (False, True):
        out = io.StringIO()
        logs.configure("info", json=json_logs, stream=out)
        try:
            _boom("local-variable-secret")
        except RuntimeError:
            structlog.get_logger("t").error("api.unhandled", error_id="err_1", exc_info=True)
            logging.getLogger("uvicorn.error").exception("stdlib")
        text = out.getvalue()
        lines = text.splitlines()
        assert len(lines) == 2, text
        assert "local-variable-secret" not in text and "Traceback" not in text
        assert all("RuntimeError" in ln and "_boom" in ln for ln in lines)
        if json_logs:
            assert json.loads(lines[0])["error_id"] == "err_1"
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
