"""The live inbox hub (issue 19): an item sent is shown to the streams of this process only once
its ``sent`` result is committed and numbered (the store tells the hub), never before."""

from __future__ import annotations

from collections.abc import Sequence

from herald.adapters.live.local import LocalLiveSignals
from herald.inbox import InboxHub
from herald.ports import InboxEntry


class _Feed:
    """The hub only reads the feed through streams; these tests open none."""

    async def append(self, items: Sequence[tuple[str, str]], *, now: float) -> dict[str, int]:
        raise AssertionError("the hub never numbers items itself any more")

    async def head(self, user_id: str) -> int:
        return 0

    async def after(self, user_id: str, seq: int, *, limit: int) -> tuple[list[InboxEntry], int]:
        return [], 0


def _hub() -> tuple[InboxHub, list[str | None]]:
    signals = LocalLiveSignals()
    woken: list[str | None] = []
    signals.on_wake(woken.append)
    return InboxHub(_Feed(), signals), woken


async def test_a_sent_item_reaches_the_streams_once_numbered() -> None:
    hub, woken = _hub()
    sub = hub.subscribe("ana")
    await hub.publish("ana", {"id": "dlv_1", "title": "one"})
    assert sub.fresh == [] and woken == []  # sending is not yet sent: nothing shown, nobody woken
    hub.numbered([("ana", "dlv_1", 7), ("bob", "dlv_2", 1)])
    assert [(seq, item["id"], item["title"], item["read"]) for seq, item in sub.fresh] == [
        (7, "dlv_1", "one", False)
    ]
    assert woken == ["ana", "bob"]  # every user numbered is told (bob's streams are elsewhere)
    assert sub.event.is_set()


async def test_nothing_is_kept_for_users_without_a_stream_here() -> None:
    hub, woken = _hub()
    await hub.publish("ana", {"id": "dlv_1"})
    sub = hub.subscribe("ana")  # opened between the send and its commit: reads the feed instead
    hub.numbered([("ana", "dlv_1", 1)])
    assert sub.fresh == [] and woken == ["ana"]
