"""The one PostgreSQL LISTEN/NOTIFY channel under the live inbox's and the queue's wake-ups
(``herald.adapters.pg_channel``): what one process sends reaches the others, the sender's own
streams hear it at once, payloads sent together arrive, and the listener comes back after its
connection is killed, saying "everyone" (``None``) first.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from herald.adapters.live.pg import PgLiveSignals
from herald.adapters.pg_channel import PgChannel
from herald.adapters.queue.pg_notify import ALL, ROUTE, ROUTE_URGENT, PgWakeups, _coalesce
from herald.adapters.queue.signals import Signals
from tests.contract.conftest import pg_execute, pg_url_for, require_postgres
from tests.support.waits import eventually


@pytest.fixture
def tag() -> str:
    """This test's channel name and application_name (to find and kill its connections)."""
    require_postgres()
    return f"herald_t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def live_pair(tag: str) -> AsyncIterator[tuple[PgLiveSignals, PgLiveSignals]]:
    dsn = pg_url_for(tag)
    sender, receiver = PgLiveSignals(dsn, channel=tag), PgLiveSignals(dsn, channel=tag)
    await sender.start()
    await receiver.start()
    try:
        yield sender, receiver
    finally:
        await sender.close()
        await receiver.close()


def recorder(signals: PgLiveSignals) -> list[str | None]:
    heard: list[str | None] = []
    signals.on_wake(heard.append)
    return heard


async def test_a_notify_reaches_the_other_process_and_the_senders_own_streams(
    live_pair: tuple[PgLiveSignals, PgLiveSignals],
) -> None:
    sender, receiver = live_pair
    mine, theirs = recorder(sender), recorder(receiver)
    for user in ("u1", "u2", "u3"):  # sent in one go: coalesced into one or more rounds
        sender.notify(user)
    assert mine[:3] == ["u1", "u2", "u3"]  # at once, before any round trip
    await eventually(lambda: asyncio.sleep(0, result={"u1", "u2", "u3"} <= set(theirs)))
    assert None not in theirs  # nothing was lost: no "everyone" wake-up


async def test_the_listener_comes_back_after_its_connection_is_killed(
    tag: str, live_pair: tuple[PgLiveSignals, PgLiveSignals]
) -> None:
    sender, receiver = live_pair
    theirs = recorder(receiver)
    pg_execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{tag}'")
    # Back: it says "everyone" (whatever was sent while nobody listened), then hears again.
    await eventually(lambda: asyncio.sleep(0, result=None in theirs))
    await eventually(lambda: asyncio.sleep(0, result=receiver.pg.listening.is_set()))

    async def heard_again() -> bool:
        sender.notify("u9")  # the sender's connection was killed too: it reconnects to send
        await asyncio.sleep(0.05)
        return "u9" in theirs

    await eventually(heard_again)


async def test_a_closed_channel_neither_sends_nor_wakes(
    live_pair: tuple[PgLiveSignals, PgLiveSignals],
) -> None:
    sender, _ = live_pair
    await sender.close()
    mine = recorder(sender)
    sender.notify("u1")
    assert mine == []


async def test_queue_wakeups_share_the_channel_with_routers(tag: str) -> None:
    dsn = pg_url_for(tag)
    routed: list[bool] = []
    woken: list[str | None] = []
    sender = PgWakeups(dsn, Signals(), channel=tag)
    receiver = PgWakeups(dsn, Signals(), channel=tag, on_route=routed.append, on_channel=woken.append)
    await sender.start()
    await receiver.start()
    try:
        await eventually(lambda: asyncio.sleep(0, result=woken == [None] and routed == [False]))
        sender.notify("email")
        sender.notify_route(True)  # urgent: not held by the pacing of the channel's wake-up
        await eventually(lambda: asyncio.sleep(0, result="email" in woken and True in routed))
        sender.notify(None)  # every channel
        await eventually(lambda: asyncio.sleep(0, result=woken.count(None) == 2))
    finally:
        await sender.close()
        await receiver.close()


def test_a_round_says_each_thing_once() -> None:
    assert _coalesce({"email", ALL, "sms", ROUTE}) == {ALL, ROUTE}
    assert _coalesce({"email", ROUTE, ROUTE_URGENT}) == {"email", ROUTE_URGENT}
    assert _coalesce({"email"}) == {"email"}


def test_the_channel_must_be_a_plain_identifier() -> None:
    with pytest.raises(ValueError, match="identifier"):
        PgChannel("postgresql://", "herald-inbox; DROP", lambda _: None, kind="live", log=None)
