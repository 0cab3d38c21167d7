"""The API's request-scoped dependencies: see :mod:`herald.entrypoints.deps`, shared with the
browser faces (``entrypoints/web``) so that neither imports the other."""

from __future__ import annotations

from herald.entrypoints.deps import (
    Caller,
    CallerDep,
    ContainerDep,
    ServicesDep,
    caller,
    check_user_access,
    container,
    require,
    services,
)
from herald.services.api_keys import SCOPES, generate_key, hash_key

__all__ = [
    "SCOPES",
    "Caller",
    "CallerDep",
    "ContainerDep",
    "ServicesDep",
    "caller",
    "check_user_access",
    "container",
    "generate_key",
    "hash_key",
    "require",
    "services",
]
