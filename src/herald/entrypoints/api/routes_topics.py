"""Topics: named sets of subscribed users; a send to a topic fans out to all of them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import Field

from herald.domain.models import Topic
from herald.entrypoints.api.deps import Caller, ServicesDep, require
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


@router.put("/{key}")
async def put_topic(
    key: str, body: TopicBody, s: ServicesDep, who: Annotated[Caller, require("admin")]
) -> dict[str, Any]:
    return topic_view(await s.directory.put_topic(key, name=body.name, data=body.data))


@router.get("/{key}")
async def get_topic(key: str, s: ServicesDep, who: Annotated[Caller, require("read")]) -> dict[str, Any]:
    return topic_view(await s.directory.topic(key))


@router.delete("/{key}", status_code=204)
async def delete_topic(key: str, s: ServicesDep, who: Annotated[Caller, require("admin")]) -> Response:
    await s.directory.delete_topic(key)
    return Response(status_code=204)


@router.post("/{key}/subscribers")
async def subscribe(
    key: str, body: SubscribersBody, s: ServicesDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    added, count = await s.directory.subscribe(key, body.user_ids)
    return {"key": key, "added": added, "subscribers": count}


@router.delete("/{key}/subscribers")
async def unsubscribe(
    key: str, body: SubscribersBody, s: ServicesDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    removed, count = await s.directory.unsubscribe_users(key, body.user_ids)
    return {"key": key, "removed": removed, "subscribers": count}


@router.delete("/{key}/subscribers/{user_id}")
async def unsubscribe_one(
    key: str, user_id: str, s: ServicesDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    removed, count = await s.directory.unsubscribe_users(key, [user_id])
    return {"key": key, "removed": removed, "subscribers": count}
