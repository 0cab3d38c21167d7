"""Sign-in, overview, notifications and dead letters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from herald.domain.errors import HeraldError, ValidationError
from herald.domain.states import CANCELLABLE
from herald.entrypoints.web.console import charts
from herald.entrypoints.web.console.base import (
    ConsoleRoute,
    container,
    current,
    first,
    form_data,
    page,
    redirect,
    safe_next,
    same_origin,
    service,
    sessions,
    writer,
)
from herald.ports_console import SearchQuery
from herald.services.api_keys import hash_key
from herald.services.console import STATUS_GROUPS, WINDOWS
from herald.services.console_auth import COOKIE

router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)
STATUSES = sorted({s for members in STATUS_GROUPS.values() for s in members})
CHANNELS = ["email", "sms", "push", "in_app", "webhook", "chat"]


# Sign-in -------------------------------------------------------------------------------------
@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return page(request, "login.html", None, next=safe_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await form_data(request)
    key = first(form, "key").strip()
    target = safe_next(first(form, "next"))
    if not same_origin(request):
        return page(
            request, "login.html", None, 403, next=target, error="this request comes from another site"
        )
    c = container(request)
    signed = await sessions(request).sign_in(hash_key(key), c.clock.now()) if key else None
    if signed is None:
        return page(request, "login.html", None, 401, next=target, error="unknown or revoked API key")
    cookie, session = signed
    response = redirect(target)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(session.expires_at - c.clock.now()),
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await writer(request, scope="read")
    response = redirect("/console/login")
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
    return response


# Overview ------------------------------------------------------------------------------------
@router.get("")
async def overview(request: Request, window: str = "day", partial: int = 0) -> Response:
    session = await current(request)
    if window not in WINDOWS:
        window = "day"
    data = await service(request).overview(window)
    series = data["series"]
    channel_rows = []
    for channel, per_status in sorted(series.by_channel.items()):
        groups: dict[str, int] = {}
        for status, count in per_status.items():
            g = next((g for g, members in STATUS_GROUPS.items() if status in members), "in_flight")
            groups[g] = groups.get(g, 0) + count
        channel_rows.append((channel, groups))
    f = series.funnel
    steps = [("sent", f["sent"]), ("delivered", f["delivered"]), ("read", f["read"])]
    engagement = await _engagement(request, series.slots[0])
    if engagement is not None:  # human opens and clicks of email, from the hourly funnel rollups
        steps += [("opened", engagement["opened"]), ("clicked", engagement["clicked"])]
    ctx: dict[str, Any] = {
        "window": window,
        "windows": list(WINDOWS),
        "data": data,
        "series": series,
        "over_time": charts.stacked_bars(
            f"deliveries per {window} slot", series.slots, series.slot_seconds, series.by_group
        ),
        "per_channel": charts.horizontal_bars("deliveries per channel", channel_rows),
        "funnel": charts.funnel(steps),
        "engagement": engagement,
        "legend": charts.LABELS,
        "colours": charts.COLOURS,
        "partial": bool(partial),
    }
    return page(request, "overview_body.html" if partial else "overview.html", session, **ctx)


async def _engagement(request: Request, since: float) -> dict[str, Any] | None:
    """Opens and clicks (people's, machines' apart) of the deliveries created since ``since``,
    from the funnel's hourly rollups (services/stats.py): the same buckets, never a scan."""
    c = container(request)
    stats = getattr(c, "stats", None)
    if stats is None:
        return None
    try:
        total: dict[str, Any] = (await stats.funnel(stats.query(since=since - since % 3600)))["total"]
    except HeraldError:
        return None
    return total


# Notifications -------------------------------------------------------------------------------
def _when(value: str, field: str) -> float | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{field}: not a date and time like 2026-12-07T10:00", field=field) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _query(params: dict[str, str], limit: int = 50) -> SearchQuery:
    def get(name: str) -> str | None:
        return params.get(name, "").strip() or None

    return SearchQuery(
        notification_id=get("id"),
        user_id=get("user"),
        status=get("status"),
        channel=get("channel"),
        template=get("template"),
        provider=get("provider"),
        reason=get("reason"),
        since=_when(params.get("since", ""), "since"),
        until=_when(params.get("until", ""), "until"),
        cursor=get("cursor"),
        limit=limit,
    )


_SEARCH_FIELDS = ("id", "user", "status", "channel", "template", "since", "until")


@router.get("/notifications")
async def notifications(request: Request) -> Response:
    session = await current(request)
    params = {k: v for k, v in request.query_params.items() if k in (*_SEARCH_FIELDS, "cursor")}
    error = None
    rows: list[Any] = []
    try:
        qry = _query(params)
        rows = await service(request).search(qry)
    except HeraldError as exc:
        error = exc.detail
    filters = {k: params.get(k, "") for k in _SEARCH_FIELDS}
    next_url = None
    if len(rows) == 50:
        next_url = "/console/notifications?" + urlencode(
            {**{k: v for k, v in filters.items() if v}, "cursor": rows[-1][0].id}
        )
    return page(
        request,
        "notifications.html",
        session,
        rows=rows,
        filters=filters,
        statuses=STATUSES,
        channels=CHANNELS,
        error=error,
        next_url=next_url,
    )


@router.get("/notifications/{notification_id}")
async def notification(request: Request, notification_id: str, after: str | None = None) -> Response:
    session = await current(request)
    try:
        n, deliveries, counts, next_after = await service(request).notification(notification_id, after=after)
    except HeraldError as exc:
        return page(request, "error.html", session, exc.status, title="Not found", detail=exc.detail)
    cancellable = sum(k for s, k in counts.items() if s in {c.value for c in CANCELLABLE})
    return page(
        request,
        "notification.html",
        session,
        n=n,
        deliveries=deliveries,
        counts=counts,
        next_after=next_after,
        cancellable=cancellable,
        cancelled=request.query_params.get("cancelled"),
    )


@router.post("/notifications/{notification_id}/cancel")
async def cancel(request: Request, notification_id: str) -> Response:
    await writer(request)
    cancelled, _unchanged = await service(request).cancel(notification_id)
    return redirect(f"/console/notifications/{notification_id}?cancelled={cancelled}")


# Dead letters --------------------------------------------------------------------------------
_DEAD_FIELDS = ("channel", "provider", "reason", "since", "until")


def _dead_filters(params: Any) -> dict[str, str]:
    return {k: str(params.get(k, "") or "") for k in _DEAD_FIELDS}


@router.get("/dead-letters")
async def dead_letters(request: Request) -> Response:
    session = await current(request)
    filters = _dead_filters(request.query_params)
    error, rows, total = None, [], 0
    try:
        svc = service(request)
        qry = _query({**filters, "cursor": request.query_params.get("cursor", "")}, limit=100)
        rows = await svc.dead_letters(qry)
        total = await svc.count_dead(_query(filters))
    except HeraldError as exc:
        error = exc.detail
    query = urlencode({k: v for k, v in filters.items() if v})
    next_url = None
    if len(rows) == 100:
        next_url = "/console/dead-letters?" + urlencode(
            {**{k: v for k, v in filters.items() if v}, "cursor": rows[-1].delivery.id}
        )
    return page(
        request,
        "dead_letters.html",
        session,
        rows=rows,
        total=total,
        filters=filters,
        channels=CHANNELS,
        error=error,
        query=query,
        next_url=next_url,
        replayed=request.query_params.get("replayed"),
    )


@router.get("/dead-letters/replay-all")
async def confirm_replay_all(request: Request) -> Response:
    session = await current(request)
    filters = _dead_filters(request.query_params)
    total = await service(request).count_dead(_query(filters))
    return page(request, "replay_confirm.html", session, filters=filters, total=total)


@router.post("/dead-letters/replay")
async def replay(request: Request) -> Response:
    _session, form = await writer(request)
    svc = service(request)
    mode = first(form, "mode", "selected")
    if mode == "all":
        filters = {k: first(form, k) for k in _DEAD_FIELDS}
        expected = first(form, "count")
        qry = _query(filters)
        total = await svc.count_dead(_query(filters))
        if expected != str(total):
            # What matches changed since the confirmation named its count: confirm again.
            return redirect(
                "/console/dead-letters/replay-all?" + urlencode({k: v for k, v in filters.items() if v})
            )
        replayed = await svc.replay_matching(qry)
    elif first(form, "one"):
        replayed = await svc.replay([first(form, "one")])
    else:
        replayed = await svc.replay(form.get("ids", []))
    back = first(form, "back") or ""
    back = back if back.startswith("/console/") else "/console/dead-letters"
    sep = "&" if "?" in back else "?"
    return redirect(f"{back}{sep}replayed={len(replayed)}")
