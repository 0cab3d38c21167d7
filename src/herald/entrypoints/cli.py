"""The ``herald`` command. Errors are one line on stderr and a non-zero exit.

Start-up is kept short (``herald --help`` in well under a second): this module imports typer
and herald's command definitions only; every command imports what it uses when it runs (see
cli_common.py, and tests/unit/test_cli_imports.py for the budget).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from herald.entrypoints import cli_admin, cli_config, cli_users
from herald.entrypoints.cli_common import ConfigOpt, fail, guarded, load, with_container

if TYPE_CHECKING:
    from herald.bootstrap import Container
    from herald.config import Settings
    from herald.domain.models import Priority
    from herald.entrypoints.children import WorkerChildren


def _version(value: bool) -> None:
    if value:
        from herald import __version__  # noqa: PLC0415

        typer.echo(f"herald {__version__}")
        raise typer.Exit()


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="herald: self-hosted notification service",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """herald: self-hosted notification service."""


keys_app = cli_admin.keys_app
db_app = cli_admin.db_app
dl_app = typer.Typer(no_args_is_help=True, help="Dead-letter queue")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(dl_app, name="dead-letters")
app.add_typer(cli_users.users_app, name="users")
app.add_typer(cli_config.config_app, name="config")
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
app.command("bench", context_settings=_PASS_THROUGH)(cli_admin.bench)

T = TypeVar("T")


def _settings(config: Path | None, **overrides: Any) -> Settings:
    return load(config, **overrides)


def _with_container(settings: Settings, fn: Callable[[Container], Awaitable[T]]) -> T:
    return with_container(settings, fn)


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
    import gc  # noqa: PLC0415

    gc.collect()
    gc.freeze()


def _serve(
    settings: Settings,
    roles: set[str],
    host: str | None,
    port: int | None,
    children: WorkerChildren | None = None,
) -> None:
    import asyncio  # noqa: PLC0415 - commands import what they use

    import uvicorn  # noqa: PLC0415

    from herald.bootstrap import build  # noqa: PLC0415
    from herald.entrypoints.api.app import create_app  # noqa: PLC0415
    from herald.entrypoints.cli_config import check_providers  # noqa: PLC0415
    from herald.entrypoints.serving import ReadyServer  # noqa: PLC0415

    # What the application's start-up would refuse about providers (an extra not installed, a
    # bad setting), said in one line before the server starts rather than as its traceback.
    problems = check_providers(settings, unknown_tables=False)
    if problems:
        raise fail(problems[0])  # as herald worker says it; `herald config check` lists them all
    sys.setswitchinterval(SWITCH_INTERVAL)
    built: list[Container] = []  # built before the server starts, handed to its lifespan

    async def make() -> Container:
        container = built.pop() if built else await build(settings)
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
    server = ReadyServer(config)

    async def main() -> None:
        # Built here, not in the lifespan: whatever else start-up refuses (a provider that
        # fails to build, the database unreachable) is then a HeraldError that `guarded`
        # prints as one line, as `herald worker` does, instead of uvicorn's traceback.
        built.append(await build(settings))
        try:
            await server.serve()
        finally:
            while built:  # the lifespan never took it
                await built.pop().stop()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())
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
    from herald.domain.models import Priority  # noqa: PLC0415
    from herald.entrypoints.children import PARENT_CHANNELS, WorkerChildren  # noqa: PLC0415

    settings = _settings(config)
    children = None
    delegated = [name for name, ch in settings.channels.items() if ch.enabled and name not in PARENT_CHANNELS]
    if settings.serve_worker_processes and delegated:
        lanes = settings.server.worker_lanes
        own = [p for p in Priority if p not in lanes or p in settings.server.serve_lanes]
        shared = _keep_other_lanes(settings, delegated, own)
        if own:
            # The children relay their lanes' outbox rows (`herald worker --lanes`: all of them
            # by default), this process those of the lanes it sends: a bulk backlog is
            # published at the children's CPU priority. Every lane has a relay.
            settings.queue.relay_lanes = own
        children = WorkerChildren(
            settings.serve_worker_processes,
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
    from herald.config import check_lanes  # noqa: PLC0415

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
    from herald.config import check_lanes  # noqa: PLC0415
    from herald.domain.models import Priority  # noqa: PLC0415

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
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from herald.bootstrap import build  # noqa: PLC0415
    from herald.entrypoints.children import ParentLink  # noqa: PLC0415
    from herald.entrypoints.loop import run as run_loop  # noqa: PLC0415

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

    run_loop(main())  # uvloop: the workers' sends cost less CPU (entrypoints/loop.py)


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
        from herald.config import check_lanes  # noqa: PLC0415

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
    from datetime import datetime  # noqa: PLC0415

    from herald.entrypoints.api.schemas import epoch  # noqa: PLC0415

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
    from herald.services.accept import Accepted, SendRequest  # noqa: PLC0415

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
        int, typer.Option(min=1, max=1000, help="deliveries shown (a page, at most 1,000)")
    ] = 100,
    deliveries_after: Annotated[
        str | None, typer.Option(help="the page after this delivery id (deliveries_next)")
    ] = None,
) -> None:
    """Show a notification, its counts per status and a page of its deliveries as JSON."""
    from herald.entrypoints.api.views import notification_page  # noqa: PLC0415
    from herald.entrypoints.service_layer import Services  # noqa: PLC0415

    settings = _settings(config)

    async def run(c: Container) -> dict[str, Any] | None:
        notifications = Services.of(c).notifications
        return notification_page(
            await notifications.page(notification_id, after=deliveries_after, limit=deliveries_limit)
        )

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
    from herald.entrypoints import stats_table  # noqa: PLC0415
    from herald.entrypoints.api.schemas import epoch  # noqa: PLC0415

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
    from herald.entrypoints.api.views import dead_letter_view  # noqa: PLC0415
    from herald.entrypoints.service_layer import Services  # noqa: PLC0415
    from herald.ports import DeadLetterFilter  # noqa: PLC0415

    settings = _settings(config)

    async def run(c: Container) -> list[dict[str, Any]]:
        flt = DeadLetterFilter(channel=channel, reason=reason, provider=provider, code=code, limit=limit)
        return [dead_letter_view(d) for d in await Services.of(c).dead_letters.find(flt)]

    for item in _with_container(settings, run):
        typer.echo(json.dumps(item))


@dl_app.command("replay")
@guarded
def dl_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="delivery ids to replay")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="replay every dead delivery matching the filters")
    ] = False,
    channel: Annotated[str | None, typer.Option(help="with --all: only this channel")] = None,
    reason: Annotated[str | None, typer.Option(help="with --all: only this reason")] = None,
    provider: Annotated[str | None, typer.Option(help="with --all: only this provider")] = None,
    code: Annotated[str | None, typer.Option(help="with --all: only this last attempt's code")] = None,
    config: ConfigOpt = None,
) -> None:
    """Put dead deliveries back in the queue with a fresh attempt budget.

    Name the deliveries, or pass --all (with --channel/--reason to narrow it). An id that is
    not a dead delivery fails the command (nothing is replayed then). A running herald sends
    them at once on PostgreSQL (its senders are woken); on SQLite at its next idle poll
    (queue.idle_wait_seconds).
    """
    from herald.entrypoints.service_layer import Services  # noqa: PLC0415
    from herald.ports import DeadLetterFilter  # noqa: PLC0415

    if ids and all_:
        raise fail("give delivery ids or --all, not both")
    filtered = bool(channel or reason or provider or code)
    if ids and filtered:
        raise fail("--channel, --reason, --provider and --code filter --all; they do not apply to named ids")
    settings = _settings(config)

    matching_filters = DeadLetterFilter(
        channel=channel, reason=reason, provider=provider, code=code, limit=10_000
    )

    async def count_matching(c: Container) -> int:
        return await Services.of(c).dead_letters.count(matching_filters)

    if not ids and not all_:
        matching = _with_container(settings, count_matching)
        what = " matching the filters" if filtered else ""
        raise fail(
            f"{matching} dead deliveries{what}; name the ids to replay, or pass --all to replay "
            f"{'all of them' if matching != 1 else 'it'}",
            2,
        )

    async def run(c: Container) -> tuple[int, list[str]]:
        dead_letters = Services.of(c).dead_letters
        if all_:  # pages of 10,000 until none is left (replayed ones are no longer dead)
            return await dead_letters.replay_all(matching_filters), []
        return await dead_letters.replay_exactly(ids or [])

    count, unknown = _with_container(settings, run)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise fail(f"not dead deliveries (unknown ids, or not dead): {shown}; nothing was replayed")
    typer.echo(f"replayed {count}")


def main() -> None:
    from herald.domain.errors import HeraldError  # noqa: PLC0415

    try:
        app()
    except HeraldError as exc:  # raised while loading configuration outside a command body
        typer.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)
