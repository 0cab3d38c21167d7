"""Issue 19: the widget script, the hosted preference page and unsubscribe confirmation (HTTP
level; the same in a real browser: tests/browser/test_inbox_widget.py)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.support.herald import make_settings, running_herald
from tests.support.inbox import checked_boxes, unsubscribe_path
from tests.support.smtp import SmtpTestServer


async def test_widget_script_is_served_from_the_package(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h, httpx.AsyncClient(base_url=h.base_url) as anon:
        r = await anon.get("/widget/herald-inbox.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert 'customElements.define("herald-inbox"' in r.text and "window.HeraldInbox" in r.text
        # Nothing loads from elsewhere: no URL in the code but the examples in its header.
        code = r.text.split("*/", 1)[1]
        assert "https://" not in code and "http://" not in code.replace('"http:"', "")


async def test_preference_page_reads_and_writes_what_the_api_does(tmp_path: Path) -> None:
    async with running_herald(make_settings(tmp_path)) as h:
        assert (await h.client.put("/v1/users/ana", json={"email": "a@example.com"})).status_code == 200
        tok = (await h.client.post("/v1/users/ana/token")).json()["token"]
        async with httpx.AsyncClient(base_url=h.base_url) as anon:
            r = await anon.get("/preferences", params={"token": tok})
            assert r.status_code == 200 and "text/html" in r.headers["content-type"]
            assert "default-src 'none'" in r.headers["content-security-policy"]
            html = r.text
            assert 'name="channels.email"' in html and 'name="categories.marketing.email"' in html
            # security is required: shown, disabled
            security = re.search(r'<input[^>]*name="categories.security.email"[^>]*>', html)
            assert security is not None and "disabled" in security.group(0)
            boxes = checked_boxes(html)
            assert boxes["categories.marketing.email"] is True and "categories.security.email" not in boxes
            form = {name: "on" for name, checked in boxes.items() if checked}
            del form["categories.marketing.email"]
            r = await anon.post("/preferences", data={**form, "token": tok}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/preferences?")
            page = await anon.get(r.headers["location"])
            assert "Your preferences are saved." in page.text
            # French, from ?lang=
            fr = await anon.get("/preferences", params={"token": tok, "lang": "fr"})
            assert "Préférences de notification" in fr.text and '<html lang="fr">' in fr.text
            # A bad token: a page saying so, and nothing else
            bad = await anon.get("/preferences", params={"token": tok[:-3] + "abc"})
            assert bad.status_code == 401 and "invalid" in bad.text and 'name="channels' not in bad.text
            assert (await anon.post("/preferences", data={"token": "hk_x"})).status_code == 401
        prefs = (await h.client.get("/v1/users/ana/preferences")).json()
        assert prefs["categories"]["marketing"]["email"]["enabled"] is False
        assert prefs["categories"]["marketing"]["sms"]["enabled"] is True
        assert prefs["channels"]["email"]["enabled"] is True
        assert prefs["categories"]["security"]["email"]["enabled"] is True


async def test_unsubscribe_get_changes_nothing_until_the_button(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    async with running_herald(settings) as h:
        path = await unsubscribe_path(h, smtp_server, "bob")
        async with httpx.AsyncClient(base_url=h.base_url) as anon:
            for _ in range(3):  # a link scanner, a mail preview, the person
                page = await anon.get(path, headers={"Accept": "text/html"})
                assert page.status_code == 200 and "marketing" in page.text and "<form" in page.text
            prefs = (await h.client.get("/v1/users/bob/preferences")).json()
            assert prefs["categories"]["marketing"]["email"]["enabled"] is True
            done = await anon.post(
                path, data={"List-Unsubscribe": "One-Click"}, headers={"Accept": "text/html"}
            )
            assert done.status_code == 200 and "You are unsubscribed" in done.text
            bad = await anon.get(path[:-3] + "abc")
            assert bad.status_code == 422 and "invalid" in bad.text
        prefs = (await h.client.get("/v1/users/bob/preferences")).json()
        assert prefs["categories"]["marketing"]["email"]["enabled"] is False
