"""Dead letters carry their history: every attempt, filterable by the last error's code."""

from __future__ import annotations

from herald.adapters.queue.sql import SqlQueue
from herald.adapters.store.sql import SqlStore
from herald.domain.models import Attempt, DeliveryResult, Outcome
from herald.ports import DeadLetterFilter
from tests.contract.conftest import NOW, S, seed


async def _attempt(
    store: SqlStore, queue: SqlQueue, channel: str, moves: dict[str, tuple[S, str]], n: int, now: float
) -> None:
    claimed = await queue.claim(channel, owner="w", limit=100, max_rank=3, lease=30, now=now)
    assert {c.id for c in claimed} == set(moves)
    results = [
        DeliveryResult(
            delivery_id=d_id,
            lease_owner="w",
            new_status=status,
            channel=channel,
            reason="retries_exhausted" if status == S.DEAD else None,
            due_at=now if status == S.RETRYING else None,
            attempt=Attempt(
                n=n,
                at=now,
                provider="smtp",
                outcome=Outcome.TRANSIENT,
                code=code,
                detail=f"{code} try again later (attempt {n})",
                latency_ms=2.0,
            ),
        )
        for d_id, (status, code) in moves.items()
    ]
    assert await store.record_results(results, now=now) == []


async def test_dead_letters_list_every_attempt_and_filter_by_last_code(
    store: SqlStore, queue: SqlQueue
) -> None:
    a, b = await seed(store, {}, {})
    await _attempt(store, queue, "email", {a.id: (S.RETRYING, "421"), b.id: (S.RETRYING, "451")}, 1, NOW)
    await _attempt(store, queue, "email", {a.id: (S.DEAD, "451"), b.id: (S.DEAD, "421")}, 2, NOW + 60)

    listed = {d.id: d for d in await store.list_dead_letters(DeadLetterFilter())}
    assert set(listed) == {a.id, b.id}
    got_a = listed[a.id]
    assert [(x.n, x.code, x.outcome) for x in got_a.attempts] == [
        (1, "421", Outcome.TRANSIENT),
        (2, "451", Outcome.TRANSIENT),
    ]
    assert got_a.attempts[-1].detail == "451 try again later (attempt 2)"
    assert got_a.attempts_made == 2

    # The code filter looks at the last attempt only: a's first attempt was 421, its last 451.
    assert [d.id for d in await store.list_dead_letters(DeadLetterFilter(code="451"))] == [a.id]
    assert [d.id for d in await store.list_dead_letters(DeadLetterFilter(code="421"))] == [b.id]
    assert await store.list_dead_letters(DeadLetterFilter(code="550")) == []
    both = DeadLetterFilter(code="451", provider="smtp", reason="retries_exhausted")
    assert [d.id for d in await store.list_dead_letters(both)] == [a.id]
    assert await store.list_dead_letters(DeadLetterFilter(code="451", provider="ses")) == []
