"""``POST /v1/users/batch``: up to 1,000 users in one request and one transaction."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from herald.entrypoints.api.deps import Caller, ServicesDep, require
from herald.services.user_import import MAX_BATCH

router = APIRouter(tags=["users"])


class UsersBatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Each: the body of PUT /v1/users/{id} with its "id", and optionally "devices",
    # "preferences" and "topics"; checked one by one so the answer is per item.
    users: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


@router.post("/v1/users/batch")
async def users_batch(
    body: UsersBatchBody, s: ServicesDep, who: Annotated[Caller, require("send")]
) -> dict[str, Any]:
    """Create or replace up to 1,000 users, with their devices, preferences and topic
    subscriptions. Items that pass their checks are written together in one transaction; the
    others are reported by index with the field at fault, and change nothing."""
    outcome = await s.directory.import_batch(body.users)
    return {
        "imported": outcome.imported,
        "failed": outcome.failed,
        "results": [r.view() for r in outcome.results],
    }
