"""The operator console and /docs in a real browser (Debian's Chromium through Playwright).

One herald runs for the module, in a thread (``herald_thread.py``); each test makes its own
users and notifications. Screenshots of every page go to ``test-artifacts/``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from herald.domain.errors import TransientDeliveryError
from herald.testing import RecordingProvider
from tests.browser.herald_thread import HeraldThread, settings_for


@pytest.fixture(scope="module")
def herald(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[HeraldThread]:
    rec = RecordingProvider("rec")
    thread = HeraldThread(settings_for(tmp_path_factory.mktemp("herald")), {"rec": rec}).start()
    try:
        status, _ = thread.api(
            "PUT",
            "/v1/templates/welcome",
            json={
                "category": "transactional",
                "channels": {"email": {"subject": "Welcome", "text": "Code {{ data.code }}"}},
            },
        )
        assert status == 200
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def rec(herald: HeraldThread) -> RecordingProvider:
    return herald.providers["rec"]


class Session:
    """A browser context signed in with one key, recording every request it makes."""

    def __init__(self, browser: Any, herald: HeraldThread, key: str) -> None:
        self.base = herald.base_url
        self.context = browser.new_context(base_url=self.base, viewport={"width": 1360, "height": 900})
        self.requests: list[str] = []
        self.context.on("request", lambda req: self.requests.append(req.url))
        self.page = self.context.new_page()
        self.page.goto("/console")
        assert "/console/login" in self.page.url  # not signed in yet: sent to the sign-in page
        self.page.fill('input[name="key"]', key)
        self.page.click('button[type="submit"]')
        self.page.wait_for_url(re.compile(r".*/console$"))

    def shot(self, artifacts: Path, name: str) -> None:
        self.page.screenshot(path=str(artifacts / f"console-{name}.png"), full_page=True)

    def csrf(self) -> str:
        value = self.page.get_attribute('input[name="csrf"]', "value")
        assert value
        return str(value)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def admin(browser: Any, herald: HeraldThread) -> Iterator[Session]:
    s = Session(browser, herald, herald.h.key)
    try:
        yield s
    finally:
        s.close()


def new_user(herald: HeraldThread) -> str:
    uid = "u-" + uuid.uuid4().hex[:8]
    status, _ = herald.api(
        "PUT", f"/v1/users/{uid}", json={"email": f"{uid}@example.com", "data": {"name": "Ana"}}
    )
    assert status == 200
    return uid


def send(herald: HeraldThread, user: str, code: str = "1") -> str:
    status, body = herald.api(
        "POST", "/v1/notifications", json={"to": user, "template": "welcome", "data": {"code": code}}
    )
    assert status == 202, body
    return str(body["id"])


def wait_status(herald: HeraldThread, nid: str, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        _, body = herald.api("GET", f"/v1/notifications/{nid}")
        ds = body.get("deliveries") or []
        return ds[0] if ds and ds[0]["status"] == status else None

    found: dict[str, Any] = herald.eventually(check)
    return found


def dead_letter(herald: HeraldThread, rec: RecordingProvider) -> tuple[str, str, str]:
    user = new_user(herald)
    rec.script(
        [TransientDeliveryError("mailbox busy", code="451"), TransientDeliveryError("greylisted", code="452")]
    )
    nid = send(herald, user)
    return user, nid, wait_status(herald, nid, "dead")["id"]


def test_sign_in_shows_the_overview_with_charts(browser: Any, herald: HeraldThread, artifacts: Path) -> None:
    s = Session.__new__(Session)
    s.base = herald.base_url
    s.context = browser.new_context(base_url=s.base, viewport={"width": 1360, "height": 900})
    s.requests = []
    s.page = s.context.new_page()
    try:
        s.page.goto("/console/login")
        s.page.screenshot(path=str(artifacts / "console-login.png"))
        s.page.fill('input[name="key"]', "hk_not_a_key")
        s.page.click('button[type="submit"]')
        assert "unknown or revoked API key" in s.page.inner_text(".error")
        s.page.fill('input[name="key"]', herald.h.key)
        s.page.click('button[type="submit"]')
        s.page.wait_for_url(re.compile(r".*/console$"))
        send(herald, new_user(herald))
        s.page.reload()
        # The charts are drawn: bars with counts, one per status group present.
        s.page.wait_for_selector("#chart-time svg rect[data-count]")
        assert s.page.locator("#chart-time svg rect[data-count]").count() >= 1
        assert s.page.locator("#chart-channel svg rect[data-group]").count() >= 1
        steps = s.page.locator("#chart-funnel svg rect[data-step]")
        assert [steps.nth(i).get_attribute("data-step") for i in range(steps.count())] == [
            "sent",
            "delivered",
            "read",
            "opened",
            "clicked",
        ]
        s.page.click("text=last week")
        s.page.wait_for_selector("#chart-time svg rect[data-count]")
        s.page.click("text=last hour")
        s.page.wait_for_selector("#chart-time svg rect[data-count]")
        s.shot(artifacts, "overview")
        cookies = {c["name"]: c for c in s.context.cookies()}
        session = cookies["herald_console"]
        assert session["httpOnly"] is True and session["sameSite"] == "Strict" and session["expires"] > 0
        assert s.page.evaluate("document.cookie") == ""  # invisible to scripts
    finally:
        s.context.close()


def test_find_a_notification_by_user_and_open_its_attempts(
    admin: Session, herald: HeraldThread, rec: RecordingProvider, artifacts: Path
) -> None:
    user = new_user(herald)
    rec.script([TransientDeliveryError("try later", code="421")])  # one failed attempt, then ok
    nid = send(herald, user, code="77")
    wait_status(herald, nid, "sent")
    page = admin.page
    page.click("nav >> text=Notifications")
    page.fill('input[name="user"]', user)
    page.click('#search button[type="submit"]')
    page.wait_for_selector(f"#results a:has-text('{nid}')")
    admin.shot(artifacts, "notifications")
    page.click(f"#results a:has-text('{nid}')")
    page.wait_for_url(f"**/console/notifications/{nid}")
    rows = page.locator("table.attempts tbody tr")
    assert rows.count() == 2
    assert "transient" in rows.nth(0).inner_text() and "421" in rows.nth(0).inner_text()
    assert "ok" in rows.nth(1).inner_text() and "rec" in rows.nth(1).inner_text()
    admin.shot(artifacts, "notification")
    page.click(f"a:has-text('{user}')")
    page.wait_for_url(f"**/console/users/{user}")
    assert f"{user}@example.com" in page.inner_text("#profile")
    assert nid in page.inner_text("#recent")
    admin.shot(artifacts, "user")


def test_a_dead_letter_shows_its_last_error_and_is_replayed_to_the_provider(
    admin: Session, herald: HeraldThread, rec: RecordingProvider, artifacts: Path
) -> None:
    _user, _nid, did = dead_letter(herald, rec)
    page = admin.page
    page.click("nav >> text=Dead letters")
    row = page.locator(f"#dead-letters tr:has(input[value='{did}'])")
    assert "452 greylisted" in row.locator(".last-error").inner_text()
    admin.shot(artifacts, "dead-letters")
    row.locator("button.replay-one").click()
    page.wait_for_selector("text=replayed: queued again, senders woken")
    herald.eventually(lambda: any(m.delivery_id == did for m in rec.sent))
    delivery = herald.call(herald.h.container.store.get_delivery(did))
    assert delivery is not None and delivery.status.value == "sent"


def test_a_template_edited_in_the_console_previews_and_sends_the_new_text(
    admin: Session, herald: HeraldThread, rec: RecordingProvider, artifacts: Path
) -> None:
    page = admin.page
    page.click("nav >> text=Templates")
    page.click("#templates a:has-text('welcome')")
    page.fill('textarea[name="sample_data"]', '{"code": "4242"}')
    page.fill('input[name="email.subject"]', "Your code {{ data.code }} (edited)")
    # The preview follows the typing, rendered by herald's sandbox.
    expect(page.locator("#preview")).to_contain_text("Your code 4242 (edited)", timeout=20_000)
    # A template error shows inline, naming the field, and nothing is saved.
    page.fill('textarea[name="email.text"]', "Code {{ data.code ")
    expect(page.locator("#preview")).to_contain_text("channels.email", timeout=20_000)
    page.fill('textarea[name="email.text"]', "New code {{ data.code }}")
    expect(page.locator("#preview")).to_contain_text("New code 4242", timeout=20_000)
    admin.shot(artifacts, "template")
    page.click("#save-button")
    page.wait_for_selector("text=Saved as version")
    user = new_user(herald)
    nid = send(herald, user, code="99")
    d = wait_status(herald, nid, "sent")
    sent = next(m for m in rec.sent if m.delivery_id == d["id"])
    assert sent.content["subject"] == "Your code 99 (edited)" and sent.content["text"] == "New code 99"


def test_a_read_key_cannot_replay_or_edit_even_by_posting_directly(
    browser: Any, herald: HeraldThread, rec: RecordingProvider, artifacts: Path
) -> None:
    _user, _nid, did = dead_letter(herald, rec)
    reader = herald.call(herald.h.new_key("read"))
    s = Session(browser, herald, reader)
    try:
        page = s.page
        page.goto("/console/dead-letters")
        assert did in page.inner_text("#dead-letters")
        assert page.locator("button.replay-one").count() == 0  # not offered ...
        csrf = s.csrf()
        # ... and refused on the server: a form post from the page's own origin, with the CSRF token.
        r = page.request.post("/console/dead-letters/replay", form={"one": did, "csrf": csrf})
        assert r.status == 403 and "may look but not change anything" in r.text()
        status = page.evaluate(
            """async ([did, csrf]) => (await fetch('/console/dead-letters/replay', {method: 'POST',
                 headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                 body: new URLSearchParams({one: did, csrf: csrf})})).status""",
            [did, csrf],
        )
        assert status == 403
        page.goto("/console/templates/welcome")
        assert page.locator("#save-button").count() == 0
        r = page.request.post(
            "/console/templates/welcome", form={"email.subject": "hacked", "email.text": "x", "csrf": csrf}
        )
        assert r.status == 403
        s.shot(artifacts, "read-only-template")
        d = herald.call(herald.h.container.store.get_delivery(did))
        assert d is not None and d.status.value == "dead"
        t = herald.call(herald.h.container.store.get_template("welcome"))
        assert t is not None and t.channels["email"]["subject"] != "hacked"
    finally:
        s.close()


PAGES = [
    "/console",
    "/console?window=hour",
    "/console?window=week",
    "/console/notifications",
    "/console/dead-letters",
    "/console/dead-letters/replay-all",
    "/console/templates",
    "/console/templates/welcome",
    "/console/users",
    "/console/rules",
    "/console/rules/order_placed",
    "/console/topics",
]


def test_every_page_loads_nothing_from_outside_herald(
    admin: Session, herald: HeraldThread, artifacts: Path
) -> None:
    user = new_user(herald)
    nid = send(herald, user)
    herald.api("PUT", "/v1/topics/news", json={"name": "News"})
    page = admin.page
    for path in [*PAGES, f"/console/notifications/{nid}", f"/console/users/{user}", "/docs", "/redoc"]:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        page.wait_for_load_state("networkidle")
    page.goto("/console/topics")
    admin.shot(artifacts, "topics")
    page.goto("/console/rules/order_placed")
    admin.shot(artifacts, "rule")
    outside = [
        u
        for u in admin.requests
        if not u.startswith(herald.base_url) and not u.startswith(("data:", "blob:"))
    ]
    assert outside == []
    assert any("/console/static/console.css" in u for u in admin.requests)


def test_docs_render_their_operations_offline(browser: Any, herald: HeraldThread, artifacts: Path) -> None:
    context = browser.new_context(base_url=herald.base_url, viewport={"width": 1360, "height": 900})
    blocked: list[str] = []

    def only_herald(route: Any) -> None:
        if route.request.url.startswith(herald.base_url):
            route.continue_()
        else:  # the machine is offline as far as this page knows
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_herald)
    violations: list[str] = []
    try:
        page = context.new_page()
        page.on(
            "console",
            lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
        )
        page.goto("/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        assert page.locator(".opblock").count() >= 20
        assert page.locator(".opblock-summary-path:has-text('/v1/notifications')").count() >= 1
        page.click("button.authorize")
        page.wait_for_selector("text=bearerAuth")
        page.fill(".modal-ux input", herald.h.key)
        page.click(".modal-ux button.authorize")
        page.click(".modal-ux button.close-modal")
        page.screenshot(path=str(artifacts / "docs.png"))
        # "Try it out" sends the key: GET /v1/rules answers 200.
        op = page.locator("#operations-events-list_rules")
        op.locator(".opblock-summary").click()
        op.locator("button.try-out__btn").click()
        op.locator("button.execute").click()
        op.locator(".live-responses-table tbody .response-col_status").first.wait_for()
        assert "200" in op.locator(".live-responses-table tbody .response-col_status").first.inner_text()
        page.goto("/redoc")
        page.locator("h2:has-text('Get Template')").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "redoc.png"))
        assert blocked == []
        assert (
            violations == []
        )  # nothing even tried (Redoc's CDN logo is removed: vendor/redoc-*/HERALD-CHANGES.md)
    finally:
        context.close()
