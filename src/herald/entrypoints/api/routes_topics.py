"""Topics: named sets of subscribed users; a send to a topic fans out to all of them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import Field

from herald.domain.errors import NotFound, ValidationError
from herald.domain.models import Topic
from herald.domain.validation import check_id
from herald.entrypoints.api.deps import Caller, ContainerDep, require
from herald.entrypoints.api.schemas import _Body
from herald.entrypoints.api.views import iso

router = APIRouter(prefix="/v1/topics", tags=["topics"])
MAX_SUBSCRIBERS_PER_REQUEST = 10_000


class TopicBody(_Body):
    name: str | None = Field(default=None, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict)


class SubscribersBody(_Body):
    user_ids: list[str] = Field(min_length=1, max_length=MAX_SUBSCRIBERS_PER_REQUEST)


def topic_view(topic: Topic) -> dict[str, Any]:
    return {
        "key": topic.key,
        "name": topic.name,
        "data": topic.data,
        "subscribers": topic.subscribers,
        "created_at": iso(topic.created_at),
        "updated_at": iso(topic.updated_at),
    }


async def _existing(c: ContainerDep, key: str) -> None:
    if not await c.store.has_topic(key):
        raise NotFound(f"topic {key!r} does not exist")


@router.put("/{key}")
async def put_topic(
    key: str, body: TopicBody, c: ContainerDep, who: Annotated[Caller, require("admin")]
) -> dict[str, Any]:
    check_id(key, "key")
    topic = await c.store.put_topic(Topic(key=key, name=body.name, data=body.data, updated_at=c.clock.now()))
    return topic_view(topic)


@router.get("/{key}")
async def get_topic(key: str, c: ContainerDep, who: Annotated[Caller, require("read")]) -> dict[str, Any]:
    topic = await c.store.get_topic(key)
    if topic is None:
        raise NotFound(f"topic {key!r} does not exist")
    return topic_view(topic)


@router.delete("/{key}", status_code=204)
async def delete_topic(key: str, c: ContainerDep, who: Annotated[Caller, require("admin")]) -> Response:
    if not await c.store.delete_topic(key):
        raise NotFound(f"topic {key!r} does not exist")
    return Response(status_code=204)


@router.post("/{key}/subscribers")
async def subscribe(
    key: str, body: SubscribersBody, c: ContainerDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    await _existing(c, key)
    ids = [check_id(u, f"user_ids[{i}]") for i, u in enumerate(body.user_ids)]
    found = await c.store.get_users(ids)
    missing = [u for u in dict.fromkeys(ids) if u not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValidationError(f"unknown user(s): {shown}", field="user_ids")
    added = await c.store.add_subscribers(key, ids, now=c.clock.now())
    return {"key": key, "added": added, "subscribers": await c.store.count_subscribers(key)}


@router.delete("/{key}/subscribers")
async def unsubscribe(
    key: str, body: SubscribersBody, c: ContainerDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    await _existing(c, key)
    removed = await c.store.remove_subscribers(key, body.user_ids)
    return {"key": key, "removed": removed, "subscribers": await c.store.count_subscribers(key)}


@router.delete("/{key}/subscribers/{user_id}")
async def unsubscribe_one(
    key: str, user_id: str, c: ContainerDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    await _existing(c, key)
    removed = await c.store.remove_subscribers(key, [user_id])
    return {"key": key, "removed": removed, "subscribers": await c.store.count_subscribers(key)}
