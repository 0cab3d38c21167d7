from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support import stack as stack_mod
from tests.support.smtp import SmtpTestServer

REQUIRE_SERVICES = os.environ.get("HERALD_REQUIRE_SERVICES") == "1"

# The Tansu broker fixtures (`kafka_broker`): started only by the tests that ask for one.
pytest_plugins = ["tests.support.kafka"]


if os.environ.get("HERALD_TEST_GC") == "1":
    # Leak hunting: collect garbage after every test, so that an object left open (a database
    # connection, a socket) warns in the teardown of the test that leaked it rather than in
    # whichever later test the collector happens to run in.
    import gc

    @pytest.fixture(autouse=True)
    def _collect_after_each_test() -> Iterator[None]:
        yield
        gc.collect()


@pytest.fixture(params=[stack_mod.EMBEDDED, stack_mod.SCALEOUT])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[stack_mod.Stack]:
    """Run the test once embedded (SQLite) and once scaled out (PostgreSQL + Redis + RabbitMQ)."""
    if request.param == stack_mod.EMBEDDED:
        yield stack_mod.CURRENT
        return
    from tests.contract.conftest import pg_execute, require_postgres
    from tests.support.rabbitmq import delete_everything, require_rabbitmq, unique_prefix

    require_postgres()
    await require_rabbitmq()
    current = stack_mod.CURRENT  # changed in place: helpers hold a reference to it
    schema, prefix = f"herald_test_{uuid.uuid4().hex[:16]}", unique_prefix()
    pg_execute(f'CREATE SCHEMA "{schema}"')
    current.name, current.pg_schema, current.queue_prefix = stack_mod.SCALEOUT, schema, prefix
    try:
        yield current
    finally:
        current.name, current.pg_schema, current.queue_prefix = stack_mod.EMBEDDED, None, None
        pg_execute(f'DROP SCHEMA "{schema}" CASCADE')
        await delete_everything(prefix)


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


@pytest.fixture(scope="session", autouse=True)
def _own_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Commands record the configurations that validated in the user's cache folder
    (herald/config_source.py): the suite's commands, in-process and in subprocesses, in one of
    its own."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    patch.undo()
