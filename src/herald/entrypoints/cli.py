"""The ``herald`` command. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer
import uvicorn

from herald.bootstrap import Container, build, build_store
from herald.config import Settings, check_lanes, load_settings
from herald.domain.errors import HeraldError
from herald.domain.models import Priority
from herald.entrypoints import stats_table
from herald.entrypoints.api.app import create_app, end_streams
from herald.entrypoints.api.deps import SCOPES, generate_key, hash_key
from herald.entrypoints.api.schemas import epoch
from herald.entrypoints.api.views import (
    MAX_DELIVERIES_PAGE,
    dead_letter_view,
    notification_page,
)
from herald.entrypoints.children import PARENT_CHANNELS, ParentLink, WorkerChildren
from herald.logs import configure
from herald.ports import DeadLetterFilter
from herald.services.accept import Accepted, SendRequest

app = typer.Typer(add_completion=False, no_args_is_help=True, help="herald: self-hosted notification service")
keys_app = typer.Typer(no_args_is_help=True, help="API keys")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
dl_app = typer.Typer(no_args_is_help=True, help="Dead-letter queue")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(dl_app, name="dead-letters")

T = TypeVar("T")
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML file (default ./herald.toml)")]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except HeraldError as exc:
            where = f" ({exc.field})" if exc.field else ""
            raise fail(f"{exc.detail}{where}") from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def _settings(config: Path | None, **overrides: Any) -> Settings:
    settings = load_settings(config, **overrides)
    configure(settings.logging.level, json=settings.logging.json_logs)
    return settings


def _with_container(settings: Settings, fn: Callable[[Container], Awaitable[T]]) -> T:
    async def main() -> T:
        container = await build(settings)
        try:
            return await fn(container)
        finally:
            await container.stop()

    return asyncio.run(main())


# A long-running herald has two busy threads: the event loop and the database thread (which
# lets go of the GIL around every SQLite call, and must then wait to get it back). With
# CPython's default 5 ms switch interval each of those waits can cost up to 5 ms; a request's
# transaction has several. 1 ms bounds that at a negligible cost in switches.
SWITCH_INTERVAL = 0.001


def freeze_startup_heap() -> None:
    """Keep what start-up built out of every later full garbage collection.

    A long-running herald holds the objects of its libraries (SQLAlchemy's schema, pydantic's
    and FastAPI's models, provider SDKs) for its whole life; CPython's full collection walks
    them all every time. Measured in the flood benchmark's serve process: ten full
    collections of ~100 ms each, every one of them a 100 ms stop for the API, the router and
    the database thread. ``gc.freeze()`` moves everything alive now to a permanent generation
    that collections skip (what long-running CPython services do after start-up).
    """
    gc.collect()
    gc.freeze()


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn waits for open responses before it shuts down: live streams end now (their
        # clients reconnect to another process and resume), so the process exits in seconds.
        end_streams(self.config.app)


def _serve(
    settings: Settings,
    roles: set[str],
    host: str | None,
    port: int | None,
    children: WorkerChildren | None = None,
) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def make() -> Container:
        container = await build(settings)
        freeze_startup_heap()
        return container

    api = create_app(
        make,
        roles=roles,
        max_body_bytes=settings.server.max_body_bytes,
        children=children,
    )
    config = uvicorn.Config(
        api,
        host=host or settings.server.host,
        port=port if port is not None else settings.server.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    server = _Server(config)
    server.run()
    if not server.started:
        raise fail(f"could not start the HTTP server on {config.host}:{config.port}")


@app.command()
@guarded
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="listen address")] = None,
    port: Annotated[int | None, typer.Option(help="listen port")] = None,
) -> None:
    """Run everything: API, routing, workers, scheduler (sends in children with server.worker_processes)."""
    settings = _settings(config)
    children = None
    delegated = [name for name, ch in settings.channels.items() if ch.enabled and name not in PARENT_CHANNELS]
    if settings.server.worker_processes and delegated:
        lanes = settings.server.worker_lanes
        own = [p for p in Priority if p not in lanes or p in settings.server.serve_lanes]
        shared = _keep_other_lanes(settings, delegated, own)
        if own:
            # The children relay their lanes' outbox rows (`herald worker --lanes`: all of them
            # by default), this process those of the lanes it sends: a bulk backlog is
            # published at the children's CPU priority. Every lane has a relay.
            settings.queue.relay_lanes = own
        children = WorkerChildren(
            settings.server.worker_processes,
            delegated,
            config=config,
            grace=settings.worker.shutdown_grace_seconds,
            lanes=None if len(lanes) == len(Priority) else [p.value for p in lanes],
            nice=settings.children_nice,
            shared=shared,
        )
    _serve(settings, {"router", "worker", "scheduler"}, host, port, children)


def _keep_other_lanes(settings: Settings, channels: list[str], own: list[Priority]) -> frozenset[str]:
    """The channels of the children whose lanes ``own`` (those the children do not send, and
    ``server.serve_lanes``) this process sends itself (and narrows their ``lanes`` to those)."""
    shared = set()
    for name in channels:
        ch = settings.channels[name]
        rest = [p for p in ch.lanes if p in own]
        if not rest:
            continue
        try:
            ch.lanes = check_lanes(rest)
        except ValueError:
            raise fail(
                f"server.worker_lanes / server.serve_lanes: the lanes left to herald serve on "
                f"{name} ({', '.join(rest)}) must be adjacent, e.g. worker_lanes = ['normal', 'low']"
            ) from None
        shared.add(name)
    return frozenset(shared)


def _parse_lanes(text: str) -> list[Priority]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    try:
        return check_lanes([Priority(x) for x in names])
    except ValueError as exc:
        known = ", ".join(p.value for p in Priority)
        raise fail(f"--lanes {text!r}: {exc} (lanes: {known})") from None


@app.command()
@guarded
def api(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="listen address")] = None,
    port: Annotated[int | None, typer.Option(help="listen port")] = None,
) -> None:
    """Run the HTTP API only (scale-out role)."""
    _serve(_settings(config), set(), host, port)


def _run_roles(
    settings: Settings, roles: set[str], wake_fd: int | None = None, channels: list[str] | None = None
) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def main() -> None:
        container = await build(settings)
        freeze_startup_heap()
        container.start_roles(roles, channels=channels)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        link = None
        if wake_fd is not None:  # a child of `herald serve`: woken by it, stops when it is gone
            unhealthy = container.delivery.unhealthy
            link = ParentLink(wake_fd, container.queue.wake, lambda: dict(unhealthy), stop.set)
            await link.start()
        await stop.wait()
        await container.stop()
        if link is not None:
            await link.close()

    asyncio.run(main())


@app.command()
@guarded
def worker(
    config: ConfigOpt = None,
    channels: Annotated[str | None, typer.Option(help="comma-separated channels to serve")] = None,
    concurrency: Annotated[int | None, typer.Option(help="send slots per channel")] = None,
    router: Annotated[bool, typer.Option(help="also route accepted notifications")] = True,
    wake_fd: Annotated[int | None, typer.Option(hidden=True, help="set by herald serve")] = None,
    lanes: Annotated[
        str | None, typer.Option(help="comma-separated priority lanes to send, e.g. critical,high")
    ] = None,
    nice: Annotated[int, typer.Option(help="lower this process's CPU priority by 0-19")] = 0,
) -> None:
    """Run routing and delivery workers (scale-out role)."""
    if not 0 <= nice <= 19:
        raise fail("--nice must be between 0 and 19")
    settings = _settings(config)
    # What this process sends; `enabled` stays as configured, since this process's router
    # routes every channel (a channel disabled here would route as `channel_disabled`).
    sends = [name for name, ch in settings.channels.items() if ch.enabled]
    if channels:
        wanted = {c.strip() for c in channels.split(",") if c.strip()}
        unknown = wanted - set(settings.channels)
        if unknown:
            raise fail(f"--channels: unknown channels {sorted(unknown)}")
        sends = [name for name in sends if name in wanted]
    if concurrency is not None:
        if concurrency < 1:
            raise fail("--concurrency must be at least 1")
        for ch in settings.channels.values():
            ch.concurrency = concurrency
    if wake_fd is not None:
        try:
            is_socket = stat.S_ISSOCK(os.fstat(wake_fd).st_mode)
        except OSError:
            is_socket = False
        if not is_socket:
            raise fail(f"--wake-fd {wake_fd}: not an open socket (herald serve sets it for its children)")
    if lanes is not None:
        serves = _parse_lanes(lanes)
        settings.queue.relay_lanes = serves  # the outbox rows of the lanes it sends
        for name in list(sends):
            ch = settings.channels[name]
            mine = [p for p in ch.lanes if p in serves]
            if not mine:
                sends.remove(name)
                continue
            try:
                ch.lanes = check_lanes(mine)
            except ValueError:
                raise fail(
                    f"--lanes {lanes!r}: with channels.{name}.lanes, the lanes left are not adjacent"
                ) from None
    if nice:
        os.nice(nice)  # a bulk sender yields the cores to the API and the critical lanes
    _run_roles(settings, {"router", "worker"} if router else {"worker"}, wake_fd, channels=sends)


@app.command()
@guarded
def scheduler(config: ConfigOpt = None) -> None:
    """Run the scheduler (scale-out role)."""
    _run_roles(_settings(config), {"scheduler"})


@keys_app.command("create")
@guarded
def keys_create(
    scope: Annotated[list[str], typer.Option("--scope", help="admin, send or read (repeatable)")],
    name: Annotated[str, typer.Option(help="a label for the key")] = "default",
    config: ConfigOpt = None,
) -> None:
    """Create an API key and print it alone on stdout (it is stored hashed: keep it)."""
    bad = [s for s in scope if s not in SCOPES]
    if bad or not scope:
        raise fail(f"--scope must be one of {', '.join(SCOPES)}")
    settings = _settings(config)

    async def main() -> str:
        store = build_store(settings)
        await store.start()
        try:
            raw, key = generate_key(name, set(scope), time.time())
            await store.create_api_key(key, hash_key(raw))
            return raw
        finally:
            await store.close()

    typer.echo(asyncio.run(main()))


@db_app.command("upgrade")
@guarded
def db_upgrade(config: ConfigOpt = None) -> None:
    """Create or migrate the database schema to the newest revision."""
    settings = _settings(config)

    async def main() -> None:
        store = build_store(settings)
        await store.start()
        await store.close()

    asyncio.run(main())
    typer.echo("database is up to date", err=True)


def _json_arg(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise fail(f"{name} is not valid JSON: {exc.msg}") from None


def _when(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return epoch(datetime.fromisoformat(value))
    except ValueError:
        raise fail(f"{name} must be an ISO 8601 date-time") from None


@app.command()
@guarded
def send(
    to: Annotated[list[str], typer.Option(help="user id (repeatable)")],
    template: Annotated[str | None, typer.Option(help="template name")] = None,
    content: Annotated[str | None, typer.Option(help="inline content as JSON")] = None,
    data: Annotated[str | None, typer.Option(help="template data as JSON")] = None,
    channels: Annotated[str | None, typer.Option(help="comma-separated channels")] = None,
    category: Annotated[str | None, typer.Option()] = None,
    priority: Annotated[str | None, typer.Option()] = None,
    send_at: Annotated[str | None, typer.Option(help="ISO 8601 date-time")] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    config: ConfigOpt = None,
) -> None:
    """Send a notification and print its id."""
    settings = _settings(config)
    req = SendRequest(
        to=to if len(to) > 1 else to[0],
        template=template,
        content=_json_arg(content, "--content"),
        data=_json_arg(data, "--data"),
        channels=channels.split(",") if channels else None,
        category=category,
        priority=priority,
        send_at=_when(send_at, "--send-at"),
    )

    async def run(c: Container) -> dict[str, Any]:
        async def build_one() -> tuple[list[Any], Accepted]:
            n = await c.accept.prepare(req, api_key_id="cli")
            return [n], Accepted(202, {"id": n.id, "status": "accepted"})

        result = await c.accept.idempotent("cli", idempotency_key, repr(req), build_one)
        return result.body

    body = _with_container(settings, run)
    typer.echo(body["id"])


@app.command()
@guarded
def status(
    notification_id: str,
    config: ConfigOpt = None,
    deliveries_limit: Annotated[
        int, typer.Option(min=1, max=MAX_DELIVERIES_PAGE, help="deliveries shown (a page)")
    ] = 100,
    deliveries_after: Annotated[
        str | None, typer.Option(help="the page after this delivery id (deliveries_next)")
    ] = None,
) -> None:
    """Show a notification, its counts per status and a page of its deliveries as JSON."""
    settings = _settings(config)

    async def run(c: Container) -> dict[str, Any] | None:
        store = c.store
        return await notification_page(store, notification_id, after=deliveries_after, limit=deliveries_limit)

    view = _with_container(settings, run)
    if view is None:
        raise fail(f"notification {notification_id} does not exist")
    typer.echo(json.dumps(view, indent=2))


@app.command()
@guarded
def stats(
    by: Annotated[
        list[str] | None, typer.Option("--by", help="template, category, channel, provider (repeat or comma)")
    ] = None,
    bucket: Annotated[str | None, typer.Option(help="hour or day (UTC)")] = None,
    since: Annotated[datetime | None, typer.Option(help="start (UTC unless an offset is given)")] = None,
    until: Annotated[datetime | None, typer.Option(help="end, exclusive")] = None,
    template: Annotated[str | None, typer.Option()] = None,
    category: Annotated[str | None, typer.Option()] = None,
    channel: Annotated[str | None, typer.Option()] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the same JSON as GET /v1/stats")] = False,
    config: ConfigOpt = None,
) -> None:
    """The delivery funnel as GET /v1/stats answers it: sent, delivered, opened, clicked, bounced,
    failed, skipped by reason, rates (default: the last 7 days, one row)."""
    settings = _settings(config)

    async def run(c: Container) -> dict[str, Any]:
        q = c.stats.query(
            by=by or (),
            bucket=bucket,
            since=epoch(since),
            until=epoch(until),
            filters={"template": template, "category": category, "channel": channel, "provider": provider},
        )
        return await c.stats.funnel(q)

    funnel = _with_container(settings, run)
    typer.echo(json.dumps(funnel, indent=2) if as_json else stats_table.render(funnel))


@dl_app.command("list")
@guarded
def dl_list(
    channel: Annotated[str | None, typer.Option()] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    code: Annotated[str | None, typer.Option(help="the last attempt's code")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    config: ConfigOpt = None,
) -> None:
    """List dead deliveries as JSON lines, each with its attempts and last error."""
    settings = _settings(config)

    async def run(c: Container) -> list[dict[str, Any]]:
        flt = DeadLetterFilter(channel=channel, reason=reason, provider=provider, code=code, limit=limit)
        return [dead_letter_view(d) for d in await c.store.list_dead_letters(flt)]

    for item in _with_container(settings, run):
        typer.echo(json.dumps(item))


@dl_app.command("replay")
@guarded
def dl_replay(
    ids: Annotated[
        list[str] | None, typer.Argument(help="delivery ids; none = every match of the filters")
    ] = None,
    channel: Annotated[str | None, typer.Option()] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    code: Annotated[str | None, typer.Option(help="the last attempt's code")] = None,
    config: ConfigOpt = None,
) -> None:
    """Put dead deliveries back in the queue with a fresh attempt budget."""
    settings = _settings(config)

    async def run(c: Container) -> int:
        chosen = list(ids or [])
        if not chosen:
            items = await c.store.list_dead_letters(
                DeadLetterFilter(channel=channel, reason=reason, provider=provider, code=code, limit=10_000)
            )
            chosen = [d.id for d in items]
        replayed = await c.store.replay_dead_letters(chosen, now=c.clock.now())
        return len(replayed)

    count = _with_container(settings, run)
    typer.echo(f"replayed {count}")


def main() -> None:
    try:
        app()
    except HeraldError as exc:  # raised while loading configuration outside a command body
        typer.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)
