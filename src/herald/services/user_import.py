"""Users in bulk: ``POST /v1/users/batch`` and ``herald users import FILE`` share this.

One user object is what ``PUT /v1/users/{id}`` takes, plus its ``id`` and, optionally, its
``devices`` (as ``POST /v1/users/{id}/devices``), its ``preferences`` (as ``PUT
/v1/users/{id}/preferences``, replacing the stored ones) and its ``topics`` (keys of existing
topics to subscribe it to). Each object is checked on its own (:func:`parse_user`), so that a
batch answers item by item; what passes is written in one transaction
(:meth:`Store.import_users`). Writing an object twice gives the same result as writing it once
(devices are matched on kind and token, subscriptions are a set), which is what makes an
interrupted file import safe to resume from its last committed batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from pydantic import ValidationError as PydanticValidationError

from herald.domain.errors import ValidationError
from herald.domain.models import Category
from herald.domain.validation import check_id
from herald.ports import UserImport, UserImportStore
from herald.services.user_fields import (
    DeviceBody,
    PreferencesBody,
    UserBody,
    check_preferences,
    device_from_body,
    user_from_body,
)

MAX_BATCH = 1000


class UserItem(UserBody):
    """One object of a batch: the body of ``PUT /v1/users/{id}`` with its ``id``, and
    optionally its devices, preferences and topics (each checked as its own endpoint does)."""

    id: str = Field(max_length=128)
    devices: list[DeviceBody] | None = Field(default=None, max_length=100)
    preferences: PreferencesBody | None = None
    topics: list[str] | None = Field(default=None, max_length=1000)


def _pydantic_error(exc: PydanticValidationError) -> ValidationError:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return ValidationError(f"{where}: {err['msg']}" if where else err["msg"], field=where or None)


def parse_user(obj: Any, categories: Mapping[str, Category], now: float) -> UserImport:
    """Check one user object. ValidationError names the field (relative to the object)."""
    if not isinstance(obj, dict):
        raise ValidationError("a user must be a JSON object with an id")
    if "id" not in obj:
        raise ValidationError("id is required", field="id")
    try:
        item = UserItem.model_validate(obj)
    except PydanticValidationError as exc:
        raise _pydantic_error(exc) from None
    user = user_from_body(item.id, item, now, id_field="id")
    user_id = user.id
    devices = [device_from_body(user_id, d, now) for d in item.devices or []]
    prefs = None
    if item.preferences is not None:
        try:
            prefs = check_preferences(user_id, item.preferences, categories)
        except ValidationError as exc:
            raise ValidationError(exc.detail, field=f"preferences.{exc.field}") from None
    topics = []
    for i, key in enumerate(item.topics or []):
        topics.append(check_id(key, f"topics[{i}]"))
    return UserImport(user=user, devices=devices, preferences=prefs, topics=list(dict.fromkeys(topics)))


@dataclass(slots=True)
class ItemResult:
    index: int
    id: str | None
    error: ValidationError | None = None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "id": self.id}
        if self.error is None:
            out["status"] = "ok"
        else:
            out["status"] = "error"
            out["error"] = {"detail": self.error.detail, "field": self.error.field}
        return out


@dataclass(slots=True)
class BatchOutcome:
    results: list[ItemResult]
    imported: int

    @property
    def failed(self) -> int:
        return len(self.results) - self.imported


@dataclass(slots=True)
class CheckedBatch:
    results: list[ItemResult]
    good: list[tuple[int, UserImport]]


def check_batch(objects: Sequence[Any], categories: Mapping[str, Category], now: float) -> CheckedBatch:
    """Check every object (CPU only: a file import checks the next batch while the previous one
    is being written)."""
    results: list[ItemResult] = []
    good: list[tuple[int, UserImport]] = []
    seen: set[str] = set()
    for i, obj in enumerate(objects):
        raw_id = obj.get("id") if isinstance(obj, dict) else None
        shown = raw_id if isinstance(raw_id, str) else None
        try:
            parsed = parse_user(obj, categories, now)
            if parsed.user.id in seen:
                raise ValidationError("the same id appears earlier in this batch", field="id")
        except ValidationError as exc:
            results.append(ItemResult(i, shown, exc))
            continue
        seen.add(parsed.user.id)
        results.append(ItemResult(i, parsed.user.id))
        good.append((i, parsed))
    return CheckedBatch(results, good)


async def write_batch(
    store: UserImportStore,
    checked: CheckedBatch,
    now: float,
    *,
    checkpoint: tuple[str, Callable[[int, int], str]] | None = None,
    known_topics: set[str] | None = None,
) -> BatchOutcome:
    """Write the objects that passed in one transaction, with ``checkpoint``: a setting's name
    and a function of (users written, items refused) giving its value, so that a file import
    resumes from the last batch committed. An object naming a topic
    that does not exist is not written and reported. ``known_topics`` caches topic keys found
    to exist, across batches."""
    results = checked.results
    known = known_topics if known_topics is not None else set()
    missing = {key for _, p in checked.good for key in p.topics} - known
    if missing:
        known |= await store.existing_topics(sorted(missing))
        missing -= known
    items: list[UserImport] = []
    for i, parsed in checked.good:
        bad = next((j for j, key in enumerate(parsed.topics) if key in missing), None)
        if bad is not None:
            key = parsed.topics[bad]
            results[i].error = ValidationError(
                f"topic {key!r} does not exist (create it with PUT /v1/topics/{key})", field=f"topics[{bad}]"
            )
            continue
        items.append(parsed)
    mark = None
    if checkpoint is not None:
        name, value = checkpoint
        mark = (name, value(len(items), len(results) - len(items)))
    if items or mark is not None:
        await store.import_users(items, now=now, checkpoint=mark)
    return BatchOutcome(results=results, imported=len(items))


async def import_batch(
    store: UserImportStore, objects: Sequence[Any], categories: Mapping[str, Category], now: float
) -> BatchOutcome:
    """``POST /v1/users/batch``: check every object, write those that pass in one transaction."""
    return await write_batch(store, check_batch(objects, categories, now), now)
