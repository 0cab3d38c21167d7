"""The funnel's rollups are bumped with every change they count, in its transaction, and read
back grouped by dimension and bucket, on every store."""

from __future__ import annotations

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.domain.funnel import DAY, HOUR, bucket_of
from herald.domain.models import Outcome
from herald.ports import EngagementEvent, FunnelQuery
from tests.contract.conftest import NOW, S, result, seed


def totals(rows: list[tuple[object, ...]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        metric, count = str(row[-2]), int(str(row[-1]))
        out[metric] = out.get(metric, 0) + count
    return out


async def test_results_routing_callbacks_and_engagement_are_counted(store: SqlStore, queue: SqlQueue) -> None:
    a, b, c, _skipped = await seed(store, {}, {}, {}, {"status": S.SKIPPED, "reason": "opted_out"})
    sms = (await seed(store, {"channel": "sms", "address": "+336"}))[0]
    claimed = await queue.claim("email", owner="w", limit=10, max_rank=3, lease=30, now=NOW)
    assert {x.id for x in claimed} == {a.id, b.id, c.id}
    await queue.claim("sms", owner="w", limit=10, max_rank=3, lease=30, now=NOW)
    results = [
        result(a, "w", S.SENT),
        result(b, "w", S.FAILED, outcome=Outcome.DEAD_ADDRESS, reason="invalid_address"),
        result(c, "w", S.DEAD, reason="retries_exhausted"),
        result(sms, "w", S.SENT),
    ]
    assert await store.record_results(results, now=NOW + 1) == []
    # A result given again (a redelivered batch) counts nothing more.
    assert await store.record_results([result(a, "w", S.SENT)], now=NOW + 2) == [a.id]

    await store.mark_delivery(a.id, S.DELIVERED, now=NOW + 5)
    await store.mark_delivery(a.id, S.DELIVERED, now=NOW + 6)  # repeated: nothing
    await store.mark_delivery(sms.id, S.FAILED, now=NOW + 7, reason="bounced")

    def ev(kind: str, *, machine: bool = False, link: int = -1) -> EngagementEvent:
        return EngagementEvent(a.id, kind, at=NOW + 60, source="pixel", machine=machine, link=link)

    first = await store.record_engagement(
        ev(
            "clicked",
            machine=True,
            link=0,
        )
    )
    assert first is not None and first.counted == ("clicks_machine", "clicked_machine") and not first.moved
    opened = await store.record_engagement(ev("opened"))
    assert opened is not None and opened.counted == ("opened",) and opened.moved
    assert opened.delivery.status == S.READ
    again = await store.record_engagement(ev("opened"))
    assert again is not None and again.counted == () and not again.moved
    click = await store.record_engagement(ev("clicked", link=1))
    assert click is not None and click.counted == ("clicks", "clicked")
    other = await store.record_engagement(ev("clicked", link=0))
    assert other is not None and other.counted == ("clicks",)
    assert (
        await store.record_engagement(EngagementEvent("dlv_missing", "opened", at=NOW, source="pixel"))
        is None
    )

    everything = await store.funnel_counts(FunnelQuery(since=NOW - DAY, until=NOW + DAY))
    assert totals(everything) == {
        "sent": 2,
        "failed": 2,
        "bounced": 2,
        "dead": 1,
        "skipped:opted_out": 1,
        "delivered": 1,
        "opened": 1,
        "clicked": 1,
        "clicks": 2,
        "clicked_machine": 1,
        "clicks_machine": 1,
    }
    events = await store.list_engagement(a.id)
    assert sorted((e["event"], str(e["link"]), e["machine"], e["count"]) for e in events) == [
        ("clicked", "0", False, 1),
        ("clicked", "0", True, 1),
        ("clicked", "1", False, 1),
        ("opened", "None", False, 2),
    ]

    by_channel = await store.funnel_counts(
        FunnelQuery(by=("channel", "provider"), bucket="hour", since=NOW - DAY, until=NOW + DAY)
    )
    keyed = {(r[0], r[1], r[3]): int(str(r[4])) for r in by_channel}
    hour = bucket_of(NOW, HOUR)
    assert all(int(str(r[2])) == hour for r in by_channel)
    assert keyed[("email", "smtp", "sent")] == 1 and keyed[("sms", "smtp", "sent")] == 1
    assert keyed[("email", "-", "skipped:opted_out")] == 1  # skipped before any provider
    assert keyed[("sms", "smtp", "bounced")] == 1

    days = await store.funnel_counts(
        FunnelQuery(
            by=("template",), bucket="day", since=NOW - DAY, until=NOW + DAY, filters={"channel": "sms"}
        )
    )
    assert {(r[0], int(str(r[1])), r[2]) for r in days} == {
        ("-", bucket_of(NOW, DAY), "sent"),
        ("-", bucket_of(NOW, DAY), "failed"),
        ("-", bucket_of(NOW, DAY), "bounced"),
    }
    assert await store.funnel_counts(FunnelQuery(since=NOW + DAY, until=NOW + 2 * DAY)) == []
    # A whole range reads whole days from the daily rows and the ends from the hourly ones:
    # each count once, whatever the alignment.
    for since, until in (
        (NOW - 3 * DAY + 1234, NOW + 2 * DAY + 77),
        (NOW - 7, NOW + 1),
        (NOW - DAY, NOW + DAY),
    ):
        whole = totals(await store.funnel_counts(FunnelQuery(since=since, until=until)))
        hours = totals(await store.funnel_counts(FunnelQuery(bucket="hour", since=since, until=until)))
        assert whole == hours == totals(everything), (since, until)


async def test_expiry_and_inbox_read_all_are_counted(store: SqlStore, queue: SqlQueue) -> None:
    gone, kept = await seed(store, {"expires_at": NOW + 10}, {"expires_at": NOW + 1000})
    inbox = await seed(
        store,
        {"channel": "in_app", "address": "u9", "user_id": "u9"},
        {"channel": "in_app", "address": "u9", "user_id": "u9b"},
    )
    assert await store.expire_deliveries(now=NOW + 20) == 1
    assert await store.expire_deliveries(now=NOW + 30) == 0
    claimed = await queue.claim("in_app", owner="w", limit=10, max_rank=3, lease=30, now=NOW + 20)
    assert len(claimed) == 2
    assert await store.record_results([result(x, "w", S.SENT) for x in inbox], now=NOW + 21) == []
    assert await store.mark_all_read("u9", now=NOW + 40) == 1
    assert await store.mark_all_read("u9", now=NOW + 41) == 0
    counts = totals(await store.funnel_counts(FunnelQuery(since=NOW - DAY, until=NOW + DAY)))
    assert counts == {"skipped:expired": 1, "sent": 2, "opened": 1}
    assert kept.id != gone.id
