"""Charts drawn on the server as inline SVG: no script, no chart library, nothing to load.

Each function returns markup (``markupsafe.Markup``) built only from numbers and escaped labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

# One colour per status group (also in console.css for the legends).
COLOURS = {
    "delivered": "#2f855a",
    "in_flight": "#3182ce",
    "failed": "#c53030",
    "skipped": "#a0aec0",
}
LABELS = {
    "delivered": "sent or later",
    "in_flight": "in flight",
    "failed": "failed or dead",
    "skipped": "skipped",
}


def _nice_max(value: int) -> int:
    if value <= 4:
        return 4
    magnitude: int = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def _label(ts: float, slot_seconds: float) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    if slot_seconds < 3600:
        return dt.strftime("%H:%M")
    if slot_seconds < 86_400 and dt.hour % 6 == 0:
        return dt.strftime("%a %H:00") if slot_seconds > 3600 else dt.strftime("%H:00")
    return dt.strftime("%H:00")


def stacked_bars(
    title: str, slots: Sequence[float], slot_seconds: float, groups: dict[str, list[int]]
) -> Markup:
    """Deliveries per time slot, stacked by status group."""
    width, height, left, bottom, top = 720, 220, 48, 28, 10
    n = max(1, len(slots))
    totals = [sum(groups[g][i] for g in groups) for i in range(len(slots))]
    ymax = _nice_max(max(totals, default=0))
    plot_h = height - bottom - top
    bar_w = (width - left - 8) / n
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        label = ymax * frac
        text = f"{label:.0f}" if label == int(label) else f"{label:.1f}"
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    every = max(1, n // 8)
    for i, ts in enumerate(slots):
        x = left + i * bar_w
        y = top + plot_h
        for g, values in groups.items():
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / ymax
            y -= h
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, bar_w - 2):.1f}" height="{h:.1f}" '
                f'fill="{COLOURS.get(g, "#718096")}" data-group="{escape(g)}" data-count="{v}">'
                f"<title>{escape(LABELS.get(g, g))}: {v}</title></rect>"
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                f"{escape(_label(ts, slot_seconds))}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers and escaped labels only


def horizontal_bars(title: str, rows: Sequence[tuple[str, dict[str, int]]]) -> Markup:
    """One bar per label (a channel), split by status group."""
    width, row_h, left = 720, 26, 90
    height = max(1, len(rows)) * row_h + 8
    totals = [sum(v.values()) for _, v in rows]
    xmax = max(totals, default=0) or 1
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, groups) in enumerate(rows):
        y = 4 + i * row_h
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{escape(label)}</text>')
        x = float(left)
        for g, colour in COLOURS.items():
            v = groups.get(g, 0)
            if v <= 0:
                continue
            w = (width - left - 70) * v / xmax
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{max(1.0, w):.1f}" height="{row_h - 8}" '
                f'fill="{colour}" data-group="{escape(g)}" data-count="{v}">'
                f"<title>{escape(LABELS.get(g, g))}: {v}</title></rect>"
            )
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 16}">{sum(groups.values())}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers and escaped labels only


def funnel(steps: Sequence[tuple[str, int]]) -> Markup:
    """Sent → delivered → read, each bar as a share of the first step."""
    width, row_h, left = 720, 30, 90
    height = len(steps) * row_h + 8
    first = steps[0][1] if steps and steps[0][1] else 1
    parts = [
        f'<svg class="chart funnel" role="img" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        "<title>delivery funnel</title>",
    ]
    for i, (label, value) in enumerate(steps):
        y = 4 + i * row_h
        w = (width - left - 150) * value / first
        share = 100.0 * value / first
        parts.append(f'<text x="{left - 8}" y="{y + 18}" text-anchor="end">{escape(label)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y}" width="{max(1.0, w):.1f}" height="{row_h - 8}" fill="#4c51bf" '
            f'data-step="{escape(label)}" data-count="{value}"/>'
        )
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 18}">{value} ({share:.1f}%)</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers and escaped labels only
