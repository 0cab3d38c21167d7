"""Issue 22: email opens and clicks tracked, machines counted apart, the funnel by template."""

from __future__ import annotations

import asyncio
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from herald.testing import FakeClock
from tests.support.herald import Running, make_settings, running_herald
from tests.support.smtp import Received, SmtpTestServer

CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
DIGEST = {
    "category": "marketing",
    "channels": {
        "email": {
            "subject": "This week",
            "text": "Deals at https://shop.example/deal",
            "html": (
                "<html><body><h1>Hi {{ user.data.name }}</h1>"
                '<p><a href="https://shop.example/deal?id={{ data.id }}">See the deal</a></p>'
                '<p><a href="https://shop.example/all">Everything</a> or '
                '<a href="mailto:help@shop.example">write to us</a></p></body></html>'
            ),
        }
    },
}
RECEIPT = {
    "category": "transactional",
    "channels": {
        "email": {"subject": "Receipt", "text": "t", "html": '<p><a href="https://shop.example/r">r</a></p>'}
    },
}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a":
            self.hrefs.append(values.get("href") or "")
        elif tag == "img":
            self.imgs.append(values.get("src") or "")


def html_of(received: Received) -> str:
    part = received.message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


async def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"not met in {timeout}s")


async def sent_delivery(h: Running, template: str, data: dict[str, Any]) -> dict[str, Any]:
    body = {"to": "u1", "template": template, "data": data, "channels": ["email"]}
    r = await h.client.post("/v1/notifications", json=body)
    assert r.status_code == 202, r.text
    nid = r.json()["id"]

    async def sent() -> dict[str, Any] | None:
        view = (await h.client.get(f"/v1/notifications/{nid}")).json()
        d = view["deliveries"][0] if view.get("deliveries") else None
        return d if d and d["status"] == "sent" else None

    result: dict[str, Any] = await wait_for(sent)
    return result


async def engagement(h: Running, delivery_id: str) -> list[dict[str, Any]]:
    r = await h.client.get(f"/v1/deliveries/{delivery_id}/engagement")
    assert r.status_code == 200
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def test_opens_and_clicks_tracked_machines_apart_and_forged_links_refused(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    clock = FakeClock()
    async with running_herald(make_settings(tmp_path, smtp_port=smtp_server.port), clock=clock) as h:
        assert (await h.client.put("/v1/templates/weekly_digest", json=DIGEST)).status_code in (200, 201)
        assert (await h.client.put("/v1/templates/receipt", json=RECEIPT)).status_code in (200, 201)
        user = {"email": "ana@example.com", "data": {"name": "Ana"}}
        assert (await h.client.put("/v1/users/u1", json=user)).status_code == 200

        d = await sent_delivery(h, "weekly_digest", {"id": "42"})
        (mail,) = smtp_server.handler.received
        unsubscribe = str(mail.message["List-Unsubscribe"])
        assert "/v1/unsubscribe/" in unsubscribe and "/t/" not in unsubscribe  # never rewritten
        links = Links()
        links.feed(html_of(mail))
        deal, everything, mailto = links.hrefs
        assert deal.startswith(f"{h.container.settings.server.public_url}/t/c/")
        assert everything.startswith(f"{h.container.settings.server.public_url}/t/c/") and deal != everything
        assert mailto == "mailto:help@shop.example"
        (pixel,) = links.imgs
        assert "/t/o/" in pixel and pixel.endswith(".gif")
        path = lambda url: url.split("127.0.0.1", 1)[1].split(":", 1)[1].split("/", 1)[1]  # noqa: E731
        deal_path, all_path, pixel_path = "/" + path(deal), "/" + path(everything), "/" + path(pixel)

        # A link scanner follows the link the instant the message arrives: redirected, counted
        # as a machine, the delivery left as it was.
        scan = await h.client.get(deal_path, headers={"User-Agent": CHROME})
        assert scan.status_code == 302 and scan.headers["location"] == "https://shop.example/deal?id=42"
        evs = await engagement(h, d["id"])
        (ev,) = evs
        assert (ev["event"], ev["machine"], ev["why"], ev["link"]) == ("clicked", True, "too_fast", 0)
        machine_open = await h.client.get(pixel_path, headers={"User-Agent": "Mozilla/5.0"})  # Apple MPP
        assert machine_open.status_code == 200 and machine_open.headers["content-type"] == "image/gif"

        clock.advance(120)
        # A person opens the message (the pixel), then clicks "Everything".
        seen = await h.client.get(pixel_path, headers={"User-Agent": CHROME})
        assert seen.status_code == 200 and seen.content.startswith(b"GIF89a")
        assert "no-store" in seen.headers["cache-control"]
        assert (await h.client.get(pixel_path, headers={"User-Agent": CHROME})).status_code == 200  # again
        clock.advance(5)
        went = await h.client.get(all_path, headers={"User-Agent": CHROME})
        assert went.status_code == 302 and went.headers["location"] == "https://shop.example/all"

        events = await engagement(h, d["id"])
        human = [(e["event"], e["link"], e["count"]) for e in events if not e["machine"]]
        assert human == [("opened", None, 2), ("clicked", 1, 1)]
        machine = sorted((e["event"], e["why"]) for e in events if e["machine"])
        assert machine == [("clicked", "too_fast"), ("opened", "user_agent")]
        view = (await h.client.get(f"/v1/notifications/{d['notification_id']}")).json()
        assert view["deliveries"][0]["status"] == "read"

        # Never an open redirect: a token for a link the message did not have, a tampered
        # token, an open token at the click path, a URL in the path.
        tracker = h.container.tracker.links
        assert tracker is not None
        forged = "/t/c/" + tracker.click_url(d["id"], 3).rsplit("/", 1)[1]
        body, mac = deal_path.rsplit("/", 1)[1].split(".")
        for bad in (
            forged,
            f"/t/c/{body}x.{mac}",
            "/t/c/" + pixel_path.rsplit("/", 1)[1].removesuffix(".gif"),
            "/t/c/https%3A%2F%2Fevil.example",
            "/t/c/" + "a" * 600,
        ):
            refused = await h.client.get(bad, headers={"User-Agent": CHROME})
            assert refused.status_code == 404, bad
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert "location" not in refused.headers
        junk = await h.client.get("/t/o/not-a-token.gif")
        assert junk.status_code == 200 and junk.content.startswith(b"GIF89a")
        assert len(await engagement(h, d["id"])) == 4  # nothing recorded for any of those

        # Transactional mail is not tracked: links and body as rendered.
        r = await sent_delivery(h, "receipt", {})
        receipt = smtp_server.handler.received[-1]
        assert html_of(receipt).strip() == '<p><a href="https://shop.example/r">r</a></p>'
        assert r["status"] == "sent"

        stats = await h.client.get("/v1/stats", params={"by": "template", "bucket": "day"})
        assert stats.status_code == 200, stats.text
        rows = {row["template"]: row for row in stats.json()["rows"]}
        digest = rows["weekly_digest"]
        assert (digest["sent"], digest["opened"], digest["clicked"]) == (1, 1, 1)
        assert digest["machine"] == {"opened": 1, "clicked": 1, "clicks": 1}
        assert digest["rates"]["open_rate"] == 1.0 and digest["rates"]["click_rate"] == 1.0
        assert (rows["receipt"]["sent"], rows["receipt"]["opened"]) == (1, 0)
        assert stats.json()["total"]["sent"] == 2

        bad_by = await h.client.get("/v1/stats", params={"by": "colour"})
        assert bad_by.status_code == 422 and "by" in bad_by.text
        bad_bucket = await h.client.get("/v1/stats", params={"bucket": "week"})
        assert bad_bucket.status_code == 422 and "bucket" in bad_bucket.text
