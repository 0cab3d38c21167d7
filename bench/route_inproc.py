"""Routing's per-delivery CPU in process: what ``herald serve`` spends building one delivery of a
topic broadcast (recipient checks, render within its budget, unsubscribe link, open/click
tracking), without the database, the API or the senders.

    python -m bench.route_inproc [--recipients 20000] [--rounds 5] [--payload template|inline|links]
                                 [--no-tracking] [--profile]

``template``: the broadcast scenario's stored template (``bench-welcome``: subject, text and
HTML with ``user.data.name`` and ``data.code``); ``inline``: the identical inline content of
``broadcast --payload inline``; ``links``: the template with three links in its HTML (a
newsletter's shape). Deliveries are built as ``RouterService`` builds them on its routing thread,
in chunks of 500 recipients (one hop each), and the figure is CPU time of this thread per
delivery (the machine is shared: wall time would measure the neighbours). ``--profile`` prints
a cProfile of one round instead. One JSON line per run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import time
from typing import Any

from bench.load import TEMPLATE, TEMPLATE_BODY
from bench.procs import calibration_ms, source_version
from herald.bootstrap import build_catalog
from herald.config import load_settings
from herald.domain.models import Notification, NotificationStatus, Priority, Recipient, Template, User
from herald.ports import RecipientContext
from herald.services.link_tracking import LinkTracker
from herald.services.route import RouterService
from herald.services.signing import Signer, UnsubscribeSigner

CHUNK = 500
LINKS_HTML = (
    "<html><body><p>Hello {{ user.data.name }},</p><p>your code is <b>{{ data.code }}</b>.</p>"
    '<p><a href="https://example.com/orders?code={{ data.code }}">Your order</a> · '
    '<a href="https://example.com/help">Help</a> · <a href="mailto:help@example.com">Write to us</a></p>'
    '<p><a href="https://example.com/blog" data-herald-track="off">Blog</a></p></body></html>'
)
INLINE = {
    "subject": "Scheduled maintenance tonight",
    "text": "herald will be down from 22:00 to 22:15 UTC.",
    "html": "<p>herald will be down from <b>22:00 to 22:15 UTC</b>.</p>",
}


def _router(tracking: bool) -> RouterService:
    settings = load_settings(None)
    signer = Signer(b"bench-route-inproc-secret-0123456789")
    public = "http://127.0.0.1:8025"
    return RouterService(
        None,  # type: ignore[arg-type]  # _build never touches the store
        _Clock(),
        build_catalog(settings),
        lambda _channel, _rank: None,
        UnsubscribeSigner(signer, public),
        tracking=LinkTracker(signer, public) if tracking else None,
    )


class _Clock:
    def now(self) -> float:
        return time.time()


def _case(payload: str, recipients: int) -> tuple[Notification, Template | None, RecipientContext]:
    template: Template | None = None
    content: dict[str, Any] | None = None
    if payload == "inline":
        content = {"email": dict(INLINE)}
    else:
        channels = {"email": dict(TEMPLATE_BODY["channels"]["email"])}  # type: ignore[index]
        if payload == "links":
            channels["email"]["html"] = LINKS_HTML
        template = Template(name=TEMPLATE, version=1, category="transactional", channels=channels)
    n = Notification(
        id="ntf_bench",
        status=NotificationStatus.ROUTING,
        recipients=[],
        template=template.name if template else None,
        template_version=1 if template else None,
        content=content,
        data={"code": "000000"},
        channels=["email"],
        category="system",
        priority=Priority.NORMAL,
        topic="bench-broadcast",
    )
    users = {
        f"bu{i:07d}": User(id=f"bu{i:07d}", email=f"bu{i:07d}@example.com", data={"name": f"User {i}"})
        for i in range(recipients)
    }
    ctx = RecipientContext(users=users, preferences={}, devices={}, suppressed={})
    return n, template, ctx


def _round(router: RouterService, n: Notification, template: Template | None, ctx: RecipientContext) -> int:
    ids = list(ctx.users)
    built = 0
    # The routing thread's build: RouterService._build, or its DeliveryBuilder once route.py is split.
    builder = getattr(router, "builder", None)
    build = builder.build if builder is not None else router._build  # type: ignore[attr-defined]
    for i in range(0, len(ids), CHUNK):
        chunk = [Recipient(user_id=u) for u in ids[i : i + CHUNK]]
        built += len(build(n, template, chunk, ctx))
    return built


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipients", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--payload", choices=("template", "inline", "links"), default="template")
    ap.add_argument("--no-tracking", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    router = _router(not args.no_tracking)
    n, template, ctx = _case(args.payload, args.recipients)
    _round(router, n, template, _case(args.payload, 500)[2])  # warm: compile, caches
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        _round(router, n, template, ctx)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    per: list[float] = []
    calibration = [calibration_ms()]
    for _ in range(args.rounds):
        started = time.thread_time()
        built = _round(router, n, template, ctx)
        per.append((time.thread_time() - started) / built * 1e6)
    calibration.append(calibration_ms())
    print(
        json.dumps(
            {
                "bench": "route_inproc",
                "herald_version": source_version(),
                "code": os.environ.get("CODE"),  # old|new when comparing (PYTHONPATH=<old>/src)
                "payload": args.payload,
                "tracking": not args.no_tracking,
                "recipients": args.recipients,
                "rounds_cpu_us_per_delivery": [round(x, 1) for x in per],
                "median_cpu_us_per_delivery": round(statistics.median(per), 1),
                "calibration_ms": calibration,
            }
        )
    )


if __name__ == "__main__":
    main()
