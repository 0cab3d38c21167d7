from __future__ import annotations

import pytest

from herald.adapters.cache.memory import MemoryCache
from herald.adapters.providers.composite import CircuitBreaker, FailoverProvider, RateLimit
from herald.domain.errors import PermanentDeliveryError, TransientDeliveryError
from herald.domain.models import OutboundMessage, Priority
from herald.testing import RecordingProvider


def msg(i: int = 0) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=f"d{i}",
        notification_id="n",
        user_id="u",
        channel="email",
        address="a@example.com",
        content={},
        category="c",
        priority=Priority.NORMAL,
        attempt=1,
    )


def test_breaker_opens_after_threshold_and_lets_one_probe_through() -> None:
    now = [0.0]
    b = CircuitBreaker(threshold=3, open_seconds=10, clock=lambda: now[0])
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.5
    assert b.state == "half_open"
    assert b.allow() and not b.allow()  # a single probe at a time
    b.failure()
    assert b.state == "open"
    now[0] = 21
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_rate_parsing() -> None:
    assert RateLimit.parse("100/s") == RateLimit(100, 1.0)
    assert RateLimit.parse("600/1m") == RateLimit(600, 60.0)
    assert RateLimit.parse("5/2h") == RateLimit(5, 7200.0)
    for bad in ("fast", "0/s", "10/0s"):
        with pytest.raises(ValueError):
            RateLimit.parse(bad)


async def test_send_rate_overflows_to_the_next_provider_and_is_shared_through_the_cache() -> None:
    cache = MemoryCache()
    a, b = RecordingProvider("a"), RecordingProvider("b")
    p1 = FailoverProvider([a, b], cache=cache, rates={"a": RateLimit(5, 60)})
    p2 = FailoverProvider([a, b], cache=cache, rates={"a": RateLimit(5, 60)})  # another worker, same cache
    for i in range(4):
        await p1.send(msg(i))
    for i in range(4, 10):
        await p2.send(msg(i))
    assert len(a.sent) == 5 and len(b.sent) == 5


async def test_one_provider_at_its_rate_waits_then_reports_transient() -> None:
    a = RecordingProvider("a")
    p = FailoverProvider([a], cache=MemoryCache(), rates={"a": RateLimit(1, 60)}, max_rate_wait=0.2)
    await p.send(msg())
    with pytest.raises(TransientDeliveryError) as err:
        await p.send(msg(1))
    assert err.value.code == "no_provider_available"


async def test_ambiguous_and_permanent_failures_do_not_fail_over() -> None:
    a, b = RecordingProvider("a"), RecordingProvider("b")
    p = FailoverProvider([a, b])
    a.script([TransientDeliveryError("timeout after send", code="timeout", ambiguous=True)])
    with pytest.raises(TransientDeliveryError) as err:
        await p.send(msg())
    assert err.value.provider == "a" and b.calls == 0  # a may have it: never a second copy via b
    a.script([PermanentDeliveryError("bad payload", code="400")])
    with pytest.raises(PermanentDeliveryError):
        await p.send(msg())
    assert b.calls == 0
    a.script([TransientDeliveryError("503", code="503")])
    receipt = await p.send(msg())
    assert receipt.provider == "b" and receipt.detail is not None and "a: 503" in receipt.detail


async def test_retry_after_pauses_the_provider() -> None:
    a, b = RecordingProvider("a"), RecordingProvider("b")
    p = FailoverProvider([a, b], threshold=100)
    a.script([TransientDeliveryError("429", code="429", retry_after=60)])
    assert (await p.send(msg())).provider == "b"
    assert (await p.send(msg(1))).provider == "b"  # a is paused for its Retry-After
    assert a.calls == 1
