"""Issue 19 in a real browser (Debian's Chromium through Playwright): a page on another origin
embeds ``<herald-inbox>``; live items, the badge, read and mark-all-read, a herald restart
with nothing missed, user isolation, the preference page and unsubscribe confirmation.

herald runs as users run it (``herald serve``, a subprocess); the app page is served by a tiny
server on another port, so every call the widget makes is cross-origin (CORS).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
from tests.support.process import HeraldProcess
from tests.support.smtp import SmtpTestServer

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def site() -> Iterator[AppSite]:
    s = AppSite()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def herald(tmp_path: Path, site: AppSite) -> Iterator[HeraldProcess]:
    herald_config(tmp_path, site.origin)
    h = HeraldProcess(tmp_path, admin_key(tmp_path)).start()
    try:
        yield h
    finally:
        h.stop()


def _open_widget(browser: Any, site: AppSite, h: HeraldProcess, user: str, path: str = "/app") -> Any:
    page = browser.new_page(viewport={"width": 900, "height": 640})
    page.on("console", lambda m: print("console:", m.text))
    page.on("pageerror", lambda e: print("pageerror:", e))
    page.goto(site.embed(path, h.url, user, user_token(h, user)))
    wait_for(lambda: widget_connected(page), "the widget's stream to connect")
    return page


def _badge(page: Any) -> str | None:
    badge = page.locator("herald-inbox [part=badge]")
    return None if badge.get_attribute("hidden") is not None else badge.text_content()


def _inbox(h: HeraldProcess, user: str) -> dict[str, Any]:
    with h.client() as c:
        body: dict[str, Any] = c.get(f"/v1/users/{user}/inbox").json()
        return body


def test_live_item_badge_read_and_mark_all_read(
    browser: Any, site: AppSite, herald: HeraldProcess, artifacts: Path
) -> None:
    page = _open_widget(browser, site, herald, "ana")
    try:
        assert _badge(page) is None  # hidden at zero
        sent = time.monotonic()
        send_in_app(herald, "ana", "Your order shipped")
        wait_for(lambda: "Your order shipped" in item_titles(page), "the live item")
        print(f"accept -> visible in the widget: {(time.monotonic() - sent) * 1000:.0f} ms")
        wait_for(lambda: _badge(page) == "1", "the badge to count it")
        item = page.locator("herald-inbox [part=item]").first
        delivery_id = item.get_attribute("data-id")
        assert (delivery_id and delivery_id.startswith("dlv_")) or delivery_id
        assert item.get_attribute("data-read") is None
        events = page.evaluate("window.heraldEvents")
        assert [e[1]["title"] for e in events if e[0] == "herald:notification"] == ["Your order shipped"]

        page.locator("herald-inbox [part=bell]").click()
        assert page.locator("herald-inbox [part=panel]").is_visible()
        assert page.locator("herald-inbox [part=bell]").get_attribute("aria-expanded") == "true"
        page.screenshot(path=str(artifacts / "inbox-widget-live.png"))

        item.click()  # marks it read and follows its url (#opened: same page)
        page.wait_for_function("() => location.hash === '#opened'")  # its url was followed
        wait_for(lambda: _badge(page) is None, "the badge to empty")
        assert item.get_attribute("data-read") is not None
        api = _inbox(herald, "ana")
        assert api["unread_count"] == 0 and api["items"][0]["id"] == delivery_id and api["items"][0]["read"]
        assert ["herald:read", {"id": delivery_id}] in page.evaluate("window.heraldEvents")

        for title in ("Second", "Third"):
            send_in_app(herald, "ana", title)
        wait_for(lambda: _badge(page) == "2", "the badge to count two")
        page.screenshot(path=str(artifacts / "inbox-widget.png"))
        page.locator("herald-inbox [part=mark-all-read]").click()
        wait_for(lambda: _badge(page) is None, "mark all read to empty the badge")
        assert page.locator("herald-inbox [part=item]:not([data-read])").count() == 0
        assert _inbox(herald, "ana")["unread_count"] == 0
        # Keyboard: Escape closes the panel and gives the focus back to the bell.
        page.keyboard.press("Escape")
        assert not page.locator("herald-inbox [part=panel]").is_visible()
        assert page.evaluate("document.activeElement.shadowRoot.activeElement.getAttribute('part')") == "bell"
    finally:
        page.close()


def test_restart_while_down_then_resume_misses_nothing(
    browser: Any, site: AppSite, herald: HeraldProcess, artifacts: Path
) -> None:
    page = _open_widget(browser, site, herald, "ana")
    held: list[Any] = []
    try:
        send_in_app(herald, "ana", "before")
        wait_for(lambda: "before" in item_titles(page), "the first item")
        # The browser's reconnects are held (as if herald were still unreachable) until an
        # item has been sent to the restarted herald: it can only arrive by the resume.
        page.route("**/inbox/stream**", lambda route: held.append(route))
        herald.stop()
        wait_for(lambda: not widget_connected(page), "the widget to notice")
        herald.start()  # on the same port
        send_in_app(herald, "ana", "while away")
        wait_for(lambda: page.evaluate("0") == 0 and held, "a reconnect attempt")  # evaluate: events flow
        for route in held:
            route.continue_()
        page.unroute("**/inbox/stream**")
        wait_for(lambda: "while away" in item_titles(page), "the item sent while the widget was away")
        assert item_titles(page) == ["while away", "before"]  # once each, newest first
        wait_for(lambda: _badge(page) == "2", "the badge to count both")
        page.locator("herald-inbox [part=bell]").click()
        page.screenshot(path=str(artifacts / "inbox-widget-after-restart.png"))
    finally:
        page.close()


def test_user_a_never_sees_user_b(browser: Any, site: AppSite, herald: HeraldProcess) -> None:
    a = _open_widget(browser, site, herald, "a", "/a")
    b = _open_widget(browser, site, herald, "b", "/b")
    try:
        send_in_app(herald, "b", "for b only")
        send_in_app(herald, "a", "for a")
        wait_for(lambda: "for a" in item_titles(a), "a's item")
        wait_for(lambda: "for b only" in item_titles(b), "b's item")
        assert item_titles(a) == ["for a"] and item_titles(b) == ["for b only"]
        # A's token naming B: refused; nothing of B's shows.
        c = browser.new_page()
        try:
            c.goto(site.embed("/a-as-b", herald.url, "b", user_token(herald, "a")))
            wait_for(
                lambda: c.evaluate("() => !!document.querySelector('herald-inbox').shadowRoot"),
                "the widget",
            )
            time.sleep(1.0)  # let it try (the listing is refused with 403)
            assert item_titles(c) == []
            assert "unavailable" in (c.locator("herald-inbox [part=status]").text_content() or "")
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_preference_page_opt_out_then_marketing_email_is_skipped(
    browser: Any, herald: HeraldProcess, artifacts: Path
) -> None:
    token = user_token(herald, "ana", email="ana@example.com")
    page = browser.new_page()
    try:
        page.goto(f"{herald.url}/preferences?token={token}")
        box = page.locator('input[name="categories.marketing.email"]')
        assert box.is_checked()
        assert page.locator('input[name="categories.security.email"]').is_disabled()
        box.uncheck()
        page.screenshot(path=str(artifacts / "preferences-page.png"))
        page.get_by_role("button").click()
        page.wait_for_url("**saved=1**")
        assert "Your preferences are saved." in page.content()
        assert not page.locator('input[name="categories.marketing.email"]').is_checked()
    finally:
        page.close()
    with herald.client() as c:
        r = c.post(
            "/v1/notifications",
            json={
                "to": "ana",
                "content": {"subject": "Deals", "text": "x"},
                "channels": ["email"],
                "category": "marketing",
            },
        )
        assert r.status_code == 202
        nid = r.json()["id"]

        def final() -> dict[str, Any] | None:
            body: dict[str, Any] = c.get(f"/v1/notifications/{nid}").json()
            return body if body["status"] in ("completed", "failed") else None

        (d,) = wait_for(final, "the marketing email to be routed")["deliveries"]
        assert (d["status"], d["reason"]) == ("skipped", "opted_out")


def test_unsubscribe_get_changes_nothing_until_the_button(
    browser: Any, tmp_path: Path, site: AppSite, smtp_server: SmtpTestServer, artifacts: Path
) -> None:
    smtp = f"""
[providers.smtp]
host = "127.0.0.1"
port = {smtp_server.port}
from_address = "noreply@herald.test"

[channels.email]
providers = ["smtp"]
"""
    herald_config(tmp_path, site.origin, extra=smtp)
    h = HeraldProcess(tmp_path, admin_key(tmp_path)).start()
    page = browser.new_page()
    try:
        user_token(h, "bob", email="bob@example.com")
        with h.client() as c:
            r = c.post(
                "/v1/notifications",
                json={
                    "to": "bob",
                    "content": {"subject": "Deals", "text": "x"},
                    "channels": ["email"],
                    "category": "marketing",
                },
            )
            assert r.status_code == 202
        msg = wait_for(lambda: smtp_server.handler.received, "the email")[0].message
        link = str(msg["List-Unsubscribe"]).strip("<>")
        path = link[link.index("/v1/unsubscribe/") :]

        def marketing_email_on() -> bool:
            with h.client() as c:
                prefs = c.get("/v1/users/bob/preferences").json()
                return bool(prefs["categories"]["marketing"]["email"]["enabled"])

        page.goto(h.url + path)
        page.reload()  # opened twice (a scanner, a preview): still nothing
        assert "marketing" in page.content()
        assert marketing_email_on()
        page.screenshot(path=str(artifacts / "unsubscribe-confirm.png"))
        page.get_by_role("button").click()
        page.wait_for_load_state()
        assert "You are unsubscribed" in page.content()
        assert not marketing_email_on()
        # A mail client's RFC 8058 one-click POST does the same (and answers JSON).
        r = httpx.post(h.url + path, data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 200 and r.json()["unsubscribed"] is True
    finally:
        page.close()
        h.stop()


def test_list_pages_on_scroll_and_labels_translate(
    browser: Any, site: AppSite, herald: HeraldProcess
) -> None:
    token = user_token(herald, "ana")
    with herald.client() as c:
        items = [
            {"to": "ana", "content": {"title": f"n{i:02d}", "body": "b"}, "channels": ["in_app"]}
            for i in range(45)
        ]
        assert c.post("/v1/notifications/batch", json={"notifications": items}).status_code in (202, 207)
    wait_for(lambda: _inbox(herald, "ana")["unread_count"] == 45, "45 items in the inbox")
    page = browser.new_page(viewport={"width": 900, "height": 640})
    try:
        page.goto(site.embed("/paged", herald.url, "ana", token))
        wait_for(lambda: widget_connected(page), "the widget's stream to connect")
        assert len(item_titles(page)) == 20  # the first page only
        assert page.locator("herald-inbox [part=badge]").text_content() == "45"
        page.locator("herald-inbox [part=bell]").click()
        for expected in (40, 45):
            page.locator("herald-inbox [part=list]").evaluate("(l) => { l.scrollTop = l.scrollHeight; }")
            wait_for(lambda n=expected: len(item_titles(page)) == n, f"{expected} items after scrolling")
        titles = item_titles(page)
        assert len(set(titles)) == 45  # every item once (one batch: ids of one millisecond, any order)
        # Labels: an attribute (JSON) or a property; the bell's accessible name says the count.
        page.locator("herald-inbox").evaluate(
            "(w) => w.setAttribute('labels', JSON.stringify({title: 'Benachrichtigungen',"
            " markAllRead: 'Alle gelesen', bell: 'Glocke', unread: '{count} ungelesen'}))"
        )
        assert page.locator("herald-inbox [part=mark-all-read]").text_content() == "Alle gelesen"
        assert page.locator("herald-inbox [part=bell]").get_attribute("aria-label") == "Glocke, 45 ungelesen"
        assert page.locator("herald-inbox [part=panel]").get_attribute("aria-label") == "Benachrichtigungen"
    finally:
        page.close()
