from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.smtp import SmtpTestServer

REQUIRE_SERVICES = os.environ.get("HERALD_REQUIRE_SERVICES") == "1"


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    server = SmtpTestServer().start()
    try:
        yield server
    finally:
        server.stop()


WELCOME = {
    "category": "transactional",
    "channels": {
        "email": {
            "subject": "Welcome, {{ user.data.name }}",
            "text": "Your code is {{ data.code }}",
            "html": "<p>Your code is <b>{{ data.code }}</b></p>",
        },
        "sms": {"text": "Code {{ data.code }}"},
        "push": {"title": "Welcome", "body": "Code {{ data.code }}"},
        "in_app": {"title": "Welcome", "body": "Code {{ data.code }}", "url": "/start"},
    },
    "locales": {"fr": {"email": {"subject": "Bienvenue, {{ user.data.name }}"}}},
}
