"""The funnel (services/stats.py) as a terminal table, for ``herald stats``."""

from __future__ import annotations

from typing import Any

RATE_COLUMNS = ("open%", "click%", "bounce%", "m.opened", "m.clicked", "skipped by reason")
COUNT_COLUMNS = ("sent", "delivered", "opened", "clicked", "bounced", "failed", "dead", "skipped")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _cells(row: dict[str, Any], keys: list[str]) -> list[str]:
    cells = [str(row.get(k) if row.get(k) is not None else "-") for k in keys]
    cells += [str(row[name]) for name in COUNT_COLUMNS]
    rates = row["rates"]
    cells += [_pct(rates["open_rate"]), _pct(rates["click_rate"]), _pct(rates["bounce_rate"])]
    machine = row["machine"]
    cells += [str(machine["opened"]), str(machine["clicked"])]
    cells.append(" ".join(f"{k}={v}" for k, v in row["skipped_by_reason"].items()) or "-")
    return cells


def render(funnel: dict[str, Any]) -> str:
    keys = list(funnel["by"]) + (["bucket"] if funnel["bucket"] else [])
    header = [
        *keys,
        *COUNT_COLUMNS,
        "open%",
        "click%",
        "bounce%",
        "m.opened",
        "m.clicked",
        "skipped by reason",
    ]
    body = [_cells(r, keys) for r in funnel["rows"]]
    total = _cells(funnel["total"] | {k: "" for k in keys}, keys)
    if keys:
        total[0] = "total"
    rows = [header, *body, total]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = set(range(len(keys), len(header) - 1))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"funnel {funnel['since']} .. {funnel['until']}"
    if funnel["filters"]:
        title += " (" + ", ".join(f"{k}={v}" for k, v in funnel["filters"].items()) + ")"
    return "\n".join([title, line(header), rule, *map(line, body), rule, line(total)])
