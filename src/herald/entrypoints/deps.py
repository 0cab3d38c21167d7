"""Request-scoped dependencies of every HTTP face (API, end-user pages, console): the container,
its services (what the handlers call: entrypoints/service_layer.py) and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from herald.bootstrap import Container
from herald.domain import urgency
from herald.domain.errors import AuthenticationError, PermissionDenied
from herald.domain.models import ApiKey
from herald.entrypoints.service_layer import Services
from herald.services.api_keys import hash_key

# What each scope may do; admin may do everything.
_IMPLIED = {"admin": {"admin", "send", "read"}, "send": {"send", "read"}, "read": {"read"}}


async def container(request: Request) -> Container:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per request.
    # Someone waits for this request: its database work goes before batch work (the request
    # runs in a task of its own, so this ends with it).
    urgency.mark_urgent()
    c: Container = request.app.state.container
    return c


ContainerDep = Annotated[Container, Depends(container)]


async def services(request: Request) -> Services:
    """The services over this app's container, built once per container."""
    urgency.mark_urgent()
    state = request.app.state
    c: Container = state.container
    built: Services | None = getattr(state, "services", None)
    if built is None or not built.built_from(c):
        built = state.services = Services.of(c)
    return built


ServicesDep = Annotated[Services, Depends(services)]


@dataclass(slots=True)
class Caller:
    api_key: ApiKey | None = None
    user_id: str | None = None  # set for end-user tokens

    def may(self, scope: str) -> bool:
        if self.api_key is None:
            return False
        return any(scope in _IMPLIED.get(s, set()) for s in self.api_key.scopes)

    @property
    def scope_id(self) -> str:
        return self.api_key.id if self.api_key else f"user:{self.user_id}"


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError("missing Authorization: Bearer <api key>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <api key>'")
    return token.strip()


# Declares bearer authentication in the OpenAPI document (the Authorize button of /docs); the
# header itself is read and checked by _bearer, with herald's own problem+json answers.
_BEARER_DOC = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="An API key (`herald keys create`), or an end user's token for their own inbox.",
)


async def caller(
    request: Request,
    c: ContainerDep,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER_DOC)] = None,
) -> Caller:
    token = _bearer(request)
    if token.startswith("ut_"):
        return Caller(user_id=c.user_tokens.verify(token, c.clock.now()))
    key = await c.lookups.api_key(hash_key(token))
    if key is None:
        raise AuthenticationError("unknown or revoked API key")
    return Caller(api_key=key)


CallerDep = Annotated[Caller, Depends(caller)]


def require(scope: str) -> object:
    async def dep(who: CallerDep) -> Caller:
        if not who.may(scope):
            raise PermissionDenied(f"this endpoint needs an API key with the {scope!r} scope")
        return who

    return Depends(dep)


def check_user_access(who: Caller, user_id: str, scope: str = "read") -> None:
    """End-user tokens reach only their own user; API keys need ``scope``."""
    if who.user_id is not None:
        if who.user_id != user_id:
            raise PermissionDenied("a user token can only reach its own user")
        return
    if not who.may(scope):
        raise PermissionDenied(f"this endpoint needs an API key with the {scope!r} scope")
