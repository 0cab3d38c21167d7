"""Open and click tracking of email: the HTML part's links rewritten to herald's signed
redirect, and an open pixel added.

* A link becomes ``{public_url}/t/c/{token}``; the token names the delivery and the link's
  index in the message, never the target: the redirect reads the target from the rendered
  message herald stored, so it can only lead where the message led (no open redirect), and a
  token for an index the message does not have is refused.
* The pixel is ``{public_url}/t/o/{token}.gif``, the token naming the delivery.
* Left alone: links that are not http(s) (``mailto:``, ``tel:``, anchors), the unsubscribe and
  preference links (the ``List-Unsubscribe`` header is never touched either), links already on
  herald, and links marked ``data-herald-track="off"``.

Rewriting parses the HTML (``html.parser``) and replaces only the start tags of the links it
rewrites, rebuilt from their parsed attributes; everything else keeps its bytes. What a parse
finds depends on the text alone, so it is done once per distinct HTML, not once per delivery:
HTML without a ``<a`` (no link can be found in it) is not parsed at all, and the last text
parsed is remembered with the rewritable tags found in it, each already split around its
``href`` — the deliveries of a broadcast whose recipients see the same HTML parse it once, and
each then costs its own signed URLs only. The tokens are signed per delivery whatever the cache.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urlsplit

from herald.services.signing import Signer

OPEN_PURPOSE = "track-open"
CLICK_PURPOSE = "track-click"
_NEVER_PATHS = ("/v1/unsubscribe", "/unsubscribe", "/preferences", "/t/")


@dataclass(slots=True)
class Rewritten:
    html: str
    links: list[str]  # the targets, by index, as they were in the rendered message


class _Links(HTMLParser):
    """Finds the ``<a href>``/``<area href>`` start tags to rewrite and where they are."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text = text
        self._base = 0  # offset in ``text`` of the parser's buffer (it drops what it consumed)
        self._at = 0  # offset of the start tag being parsed
        self.found: list[tuple[int, int, list[tuple[str, str | None]], str]] = []  # start, end, attrs, href

    def scan(self) -> list[tuple[int, int, list[tuple[str, str | None]], str]]:
        self.feed(self.text)
        self._base = len(self.text) - len(self.rawdata)
        self.close()
        return self.found

    def parse_starttag(self, i: int) -> int:
        self._at = self._base + i
        return super().parse_starttag(i)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area"):
            return
        raw = self.get_starttag_text() or ""
        start = self._at
        if self.text[start : start + len(raw)] != raw:  # not where the parser says: leave it
            return
        href = next((v for k, v in attrs if k == "href"), None)
        if href is None:
            return
        self.found.append((start, start + len(raw), attrs, href.strip()))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def _attr(key: str, value: str | None) -> str:
    return key if value is None else f'{key}="{html.escape(value, quote=True)}"'


def _pieces(name: str, attrs: list[tuple[str, str | None]]) -> tuple[str, ...]:
    """The rebuilt start tag split where each ``href`` value goes: ``escaped_url.join(pieces)``
    is the tag rebuilt from ``attrs``, every href set to that URL, ``data-herald-track`` dropped."""
    pieces: list[str] = []
    current = "<" + name
    for key, value in attrs:
        if key == "data-herald-track":
            continue
        if key == "href":
            pieces.append(current + ' href="')
            current = '"'
        else:
            current += " " + _attr(key, value)
    pieces.append(current + ">")
    return tuple(pieces)


@dataclass(frozen=True, slots=True)
class _Link:
    start: int
    end: int
    href: str
    pieces: tuple[str, ...]  # the rebuilt tag around its tracked URL(s), see _pieces


_MAY_LINK = re.compile("<a", re.IGNORECASE)  # every <a ...> and <area ...> start tag has it


class LinkTracker:
    def __init__(self, signer: Signer, public_url: str) -> None:
        self._signer = signer
        self.public_url = public_url.rstrip("/")
        self._own = urlsplit(self.public_url)
        self._memo: tuple[str, tuple[_Link, ...]] | None = None

    # Tokens ---------------------------------------------------------------------------------
    def open_url(self, delivery_id: str) -> str:
        return f"{self.public_url}/t/o/{self._signer.sign(OPEN_PURPOSE, delivery_id)}.gif"

    def click_url(self, delivery_id: str, index: int) -> str:
        return f"{self.public_url}/t/c/{self._signer.sign(CLICK_PURPOSE, delivery_id, str(index))}"

    def verify_open(self, token: str) -> str | None:
        """The delivery id an open token names (None: not a valid token)."""
        fields = self._signer.verify(OPEN_PURPOSE, token)
        return fields[0] if fields is not None and len(fields) == 1 and fields[0] else None

    def verify_click(self, token: str) -> tuple[str, int] | None:
        """(delivery id, link index) a click token names (None: not a valid token)."""
        fields = self._signer.verify(CLICK_PURPOSE, token)
        if fields is None or len(fields) != 2 or not fields[1].isdigit():
            return None
        return fields[0], int(fields[1])

    # Rewriting ------------------------------------------------------------------------------
    def _trackable(self, href: str, attrs: list[tuple[str, str | None]]) -> bool:
        """Whether a link is rewritten, the ``keep`` set apart (it varies by delivery)."""
        if any(k == "data-herald-track" and (v or "").lower() == "off" for k, v in attrs):
            return False
        parts = urlsplit(href)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            return False
        own = parts.netloc.lower() == self._own.netloc.lower()
        return not (own and parts.path.startswith(_NEVER_PATHS))

    def _links(self, text: str) -> tuple[_Link, ...]:
        """The trackable links of ``text``; the last text's answer is remembered."""
        memo = self._memo
        if memo is not None and memo[0] == text:
            return memo[1]
        links: tuple[_Link, ...] = ()
        if _MAY_LINK.search(text) is not None:
            links = tuple(
                _Link(
                    start,
                    end,
                    href,
                    _pieces(text[start + 1 : end].split(None, 1)[0].rstrip("/>").lower() or "a", attrs),
                )
                for start, end, attrs, href in _Links(text).scan()
                if self._trackable(href, attrs)
            )
        self._memo = (text, links)  # one assignment: safe should two threads rewrite at once
        return links

    def rewrite(self, delivery_id: str, text: str, *, keep: set[str], pixel: bool = True) -> Rewritten:
        """``text`` with its links tracked and the open pixel added; ``keep``: URLs never
        rewritten (the unsubscribe link)."""
        links: list[str] = []
        index: dict[str, int] = {}
        out: list[str] = []
        pos = 0
        for link in self._links(text):
            href = link.href
            if href in keep:
                continue
            i = index.get(href)
            if i is None:
                i = index[href] = len(links)
                links.append(href)
            out.append(text[pos : link.start])
            out.append(html.escape(self.click_url(delivery_id, i), quote=True).join(link.pieces))
            pos = link.end
        result = "".join(out) + text[pos:] if out else text
        if pixel:
            img = (
                f'<img src="{html.escape(self.open_url(delivery_id), quote=True)}" width="1" height="1" '
                'alt="" style="border:0;width:1px;height:1px">'
            )
            # Before </body> when the message has one (its offset shifted by the rewrites).
            marker = result.lower().rfind("</body>")
            result = result[:marker] + img + result[marker:] if marker >= 0 else result + img
        return Rewritten(result, links)
