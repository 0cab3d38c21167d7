"""The delivery funnel: what each change of a delivery counts, and the rates read from counts.

Counts are kept per hour bucket (the hour the delivery was created in) and per template,
category, channel and provider. Metric names:

* ``sent``, ``delivered``, ``failed``, ``dead``, ``bounced`` (a dead address: a bounce callback
  or a provider refusing the address), ``skipped:<reason>``;
* ``opened`` / ``clicked``: deliveries opened / clicked at least once by a human (unique);
  ``clicks``: every human click; each with a ``_machine`` twin (privacy proxies, link scanners,
  bots) counted apart, so the rates are human rates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from herald.domain.models import DeliveryStatus, Outcome, Reason

S = DeliveryStatus
HOUR = 3600
DAY = 86_400
BUCKETS = {"hour": HOUR, "day": DAY}
DIMENSIONS = ("template", "category", "channel", "provider")
NONE = "-"  # a dimension with no value: inline content (template), no provider tried yet
SKIPPED_PREFIX = "skipped:"
COUNTS = ("sent", "delivered", "opened", "clicked", "clicks", "bounced", "failed", "dead")
MACHINE = ("opened_machine", "clicked_machine", "clicks_machine")


def bucket_of(ts: float, size: int = HOUR) -> int:
    return int(ts // size) * size


def result_metrics(status: S, reason: str | None, outcome: Outcome) -> tuple[str, ...]:
    """What a recorded send attempt counts (a retry counts nothing yet)."""
    if status == S.SENT:
        return ("sent",)
    if status == S.FAILED:
        return ("failed", "bounced") if outcome == Outcome.DEAD_ADDRESS else ("failed",)
    if status == S.DEAD:
        return ("dead",)
    if status == S.SKIPPED:
        return (SKIPPED_PREFIX + (reason or "unknown"),)
    return ()


def routed_metrics(status: S, reason: str | None) -> tuple[str, ...]:
    """What a delivery written by routing counts: skipped ones (and failed renders) end there."""
    if status == S.SKIPPED:
        return (SKIPPED_PREFIX + (reason or "unknown"),)
    if status == S.FAILED:
        return ("failed",)
    return ()


def marked_metrics(channel: str, old: S, new: S, reason: str | None) -> tuple[str, ...]:
    """A callback or client event moving a delivery on. ``delivered`` counts only a delivery
    report (a ``read`` straight from ``sent`` proves no report: counting it would make every
    open rate 100% where no provider reports deliveries). For channels other than email,
    ``read`` (the inbox, a client) is the open; email opens come from tracking events."""
    out: list[str] = []
    if new == S.DELIVERED:
        out.append("delivered")
    if new == S.READ and channel != "email":
        out.append("opened")
    if new == S.FAILED:
        out.append("failed")
        if reason == Reason.BOUNCED:
            out.append("bounced")
    return tuple(out)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summarize(counts: Mapping[str, int]) -> dict[str, Any]:
    """One row of the funnel: the counts, skipped by reason, the machine counts apart, rates."""
    row: dict[str, Any] = {name: int(counts.get(name, 0)) for name in COUNTS}
    skipped = {
        k[len(SKIPPED_PREFIX) :]: int(v) for k, v in counts.items() if k.startswith(SKIPPED_PREFIX) and v
    }
    row["skipped"] = sum(skipped.values())
    row["skipped_by_reason"] = dict(sorted(skipped.items()))
    row["machine"] = {name.removesuffix("_machine"): int(counts.get(name, 0)) for name in MACHINE}
    sent, delivered, opened = row["sent"], row["delivered"], row["opened"]
    # Opens and clicks over what was reported delivered; where no provider reports deliveries
    # (SMTP), over what was sent. Bounces over sent.
    base = delivered or sent
    row["rates"] = {
        "delivery_rate": _rate(delivered, sent),
        "open_rate": _rate(opened, base),
        "click_rate": _rate(row["clicked"], base),
        "click_to_open_rate": _rate(row["clicked"], opened),
        "bounce_rate": _rate(row["bounced"], sent),
    }
    return row
