"""Email link rewriting and machine detection, without I/O."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from herald.domain.engagement import MachinePolicy, is_machine
from herald.services.link_tracking import LinkTracker
from herald.services.signing import Signer

PUBLIC = "https://herald.example.com"
UNSUB = f"{PUBLIC}/v1/unsubscribe/abc.def"


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href") is not None:
            self.hrefs.append(values["href"] or "")
        if tag == "img":
            self.imgs.append(values.get("src") or "")


def parsed(html: str) -> _Hrefs:
    p = _Hrefs()
    p.feed(html)
    p.close()
    return p


@pytest.fixture
def tracker() -> LinkTracker:
    return LinkTracker(Signer(b"k" * 32), PUBLIC)


def test_links_rewritten_to_signed_redirects_and_pixel_added(tracker: LinkTracker) -> None:
    html = (
        "<html><body>\n<p>Hi <b>Ana</b> &amp; co</p>\n"
        '<a href="https://shop.example/deal?a=1&amp;b=2" class="btn">Deal</a>\n'
        "<a href='https://shop.example/other'>Other</a> <a href=\"https://shop.example/deal?a=1&amp;b=2\">again</a>\n"
        '<a href="mailto:help@example.com">mail</a> <a href="#top">top</a> <a href="/relative">rel</a>\n'
        f'<a href="{UNSUB}">unsubscribe</a> <a href="{PUBLIC}/preferences?token=x">preferences</a>\n'
        '<a href="https://shop.example/private" data-herald-track="off">no</a>\n'
        "</body></html>"
    )
    done = tracker.rewrite("dlv_1", html, keep={UNSUB})
    assert done.links == ["https://shop.example/deal?a=1&b=2", "https://shop.example/other"]
    seen = parsed(done.html)
    c0, c1 = tracker.click_url("dlv_1", 0), tracker.click_url("dlv_1", 1)
    assert seen.hrefs == [
        c0, c1, c0, "mailto:help@example.com", "#top", "/relative", UNSUB, f"{PUBLIC}/preferences?token=x",
        "https://shop.example/private",
    ]  # fmt: skip
    assert seen.imgs == [tracker.open_url("dlv_1")]
    assert done.html.index("<img") < done.html.index("</body>")
    # Everything but the rewritten tags keeps its bytes; other attributes are kept.
    assert "<p>Hi <b>Ana</b> &amp; co</p>" in done.html and 'class="btn"' in done.html
    assert tracker.verify_click(c1.rsplit("/", 1)[1]) == ("dlv_1", 1)
    assert tracker.verify_open(tracker.open_url("dlv_1").rsplit("/", 1)[1].removesuffix(".gif")) == "dlv_1"


def test_tokens_of_one_kind_or_tampered_are_refused(tracker: LinkTracker) -> None:
    click = tracker.click_url("dlv_1", 0).rsplit("/", 1)[1]
    opened = tracker.open_url("dlv_1").rsplit("/", 1)[1].removesuffix(".gif")
    assert tracker.verify_open(click) is None and tracker.verify_click(opened) is None
    body, mac = click.split(".")
    assert tracker.verify_click(body + "A." + mac) is None
    assert tracker.verify_click("https://evil.example") is None
    other = LinkTracker(Signer(b"x" * 32), PUBLIC)
    assert tracker.verify_click(other.click_url("dlv_1", 0).rsplit("/", 1)[1]) is None


def test_html_without_body_gets_the_pixel_at_the_end(tracker: LinkTracker) -> None:
    done = tracker.rewrite("dlv_2", "<p>Code <b>1234</b></p>", keep=set())
    assert done.links == [] and done.html.startswith("<p>Code <b>1234</b></p><img ")


@pytest.mark.parametrize(
    ("agent", "since", "machine", "why"),
    [
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36", 60.0, False, None),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
            0.4,
            True,
            "too_fast",
        ),
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            600,
            True,
            "user_agent",
        ),
        ("Mozilla/5.0", 3600.0, True, "user_agent"),  # Apple Mail Privacy Protection
        ("", 3600.0, True, "user_agent"),
        (None, 3600.0, True, "user_agent"),
        ("python-requests/2.31", 3600.0, True, "user_agent"),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", 3600.0, True, "user_agent"),
        ("Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15", None, False, None),
    ],
)
def test_machine_detection(agent: str | None, since: float | None, machine: bool, why: str | None) -> None:
    assert is_machine(agent, since, MachinePolicy(machine_seconds=2.0)) == (machine, why)
