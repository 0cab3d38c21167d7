"""Issue 19, scale-out, in a real browser: ``herald api`` + ``herald worker`` on PostgreSQL.
The worker delivers in-app; the widget, connected to the API process, shows it live."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import (
    AppSite,
    admin_key,
    herald_config,
    item_titles,
    send_in_app,
    user_token,
    wait_for,
    widget_connected,
)
from tests.contract.conftest import pg_execute, pg_url_for, require_postgres
from tests.support.process import HeraldProcess

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    require_postgres()
    schema = f"herald_test_{uuid.uuid4().hex[:16]}"
    pg_execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        pg_execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_scaleout_live_item_reaches_the_widget(
    browser: Any, tmp_path: Path, pg_schema: str, artifacts: Path
) -> None:
    site = AppSite()
    herald_config(tmp_path, site.origin, database_url=pg_url_for(pg_schema))
    key = admin_key(tmp_path)
    api = HeraldProcess(tmp_path, key, role="api").start()
    worker = HeraldProcess(tmp_path, key, role="worker").start()
    page = browser.new_page(viewport={"width": 900, "height": 640})
    try:
        page.goto(site.embed("/app", api.url, "ana", user_token(api, "ana")))
        wait_for(lambda: widget_connected(page), "the widget's stream to connect")
        sent = time.monotonic()
        send_in_app(api, "ana", "Sent by the worker")
        wait_for(lambda: "Sent by the worker" in item_titles(page), "the live item from the worker")
        print(f"scale-out accept -> visible in the widget: {(time.monotonic() - sent) * 1000:.0f} ms")
        badge = page.locator("herald-inbox [part=badge]")
        wait_for(lambda: badge.get_attribute("hidden") is None and badge.text_content() == "1", "the badge")
        page.locator("herald-inbox [part=bell]").click()
        page.screenshot(path=str(artifacts / "inbox-widget-scaleout.png"))
        page.locator("herald-inbox [part=item]").first.click()
        wait_for(lambda: badge.get_attribute("hidden") is not None, "the badge to empty")
        with api.client() as c:
            assert c.get("/v1/users/ana/inbox").json()["unread_count"] == 0
    finally:
        page.close()
        for p in (api, worker):
            p.stop()
        site.close()
