"""The Celery pipeline a Python team builds for the same job, for ``python -m bench celery_baseline``.

One task per notification, run by a prefork Celery worker (RabbitMQ broker, late acks so that a
worker that dies mid-task gets the message again: at least once, as herald):

1. dedup in Redis (``SET key NX EX``): a notification id seen before is not sent twice;
2. a status row in PostgreSQL (``INSERT ... status 'sending'``, one autocommit statement);
3. render the template with Jinja2 (compiled once per process; user and data as herald's);
4. ``POST /v3/mail/send`` to the provider through one ``requests.Session`` per process (keep-alive),
   the notification id in ``custom_args`` as herald sends it (the emulator keeps receipts by it);
5. the row updated to ``sent`` (or ``retrying``, and the task retried with a backoff, on a 429/5xx
   or a connection error).

Everything is configured from the environment the scenario sets (its own queue names, PostgreSQL
schema and Redis prefix, all removed afterwards): ``BENCH_CELERY_BROKER``, ``BENCH_CELERY_QUEUE``,
``BENCH_CELERY_PG``, ``BENCH_CELERY_SCHEMA``, ``BENCH_CELERY_REDIS``, ``BENCH_CELERY_PREFIX``,
``BENCH_CELERY_PROVIDER``, ``BENCH_CELERY_API_KEY``.

Run by the scenario as ``python -m celery -A bench.celery_app worker --pool prefork --concurrency 8``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

TABLE = "notification_status"

app = Celery("herald_bench")


def configure(queue: str, broker: str) -> None:
    """Point the app at a broker and at this run's queue (and its exchange, of the same name)."""
    app.conf.update(
        broker_url=broker,
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_queues=[Queue(queue, Exchange(queue, type="direct"), routing_key=queue, durable=True)],
        task_acks_late=True,  # at least once: a worker that dies mid-task has it redelivered
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=4,  # Celery's default
        worker_enable_remote_control=False,  # no pidbox queues on the shared broker
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )


configure(
    os.environ.get("BENCH_CELERY_QUEUE", "herald-bench-celery"),
    os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1//"),
)

SUBJECT = "Welcome, {{ user.data.name }}"
TEXT = "Hello {{ user.data.name }}, your code is {{ data.code }}."
HTML = "<p>Hello {{ user.data.name }}, your code is <b>{{ data.code }}</b>.</p>"

_state: dict[str, Any] = {}


def _resources() -> dict[str, Any]:
    """Per worker process (after the fork): connections, the HTTP session, compiled templates."""
    if _state:
        return _state
    import jinja2
    import psycopg
    import redis
    import requests
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(autoescape=jinja2.select_autoescape(default=False))
    html_env = SandboxedEnvironment(autoescape=True)
    schema = os.environ["BENCH_CELERY_SCHEMA"]
    pg = psycopg.connect(os.environ["BENCH_CELERY_PG"], autocommit=True)
    pg.execute(f'SET search_path TO "{schema}"')
    session = requests.Session()
    session.headers.update(
        {
            "Authorization": f"Bearer {os.environ['BENCH_CELERY_API_KEY']}",
            "Content-Type": "application/json",
        }
    )
    _state.update(
        pg=pg,
        redis=redis.Redis.from_url(os.environ["BENCH_CELERY_REDIS"]),
        prefix=os.environ["BENCH_CELERY_PREFIX"],
        session=session,
        url=os.environ["BENCH_CELERY_PROVIDER"].rstrip("/") + "/v3/mail/send",
        subject=env.from_string(SUBJECT),
        text=env.from_string(TEXT),
        html=html_env.from_string(HTML),
    )
    return _state


class RetryableSend(Exception):
    pass


@app.task(
    name="bench.send_notification",
    bind=True,
    autoretry_for=(RetryableSend,),
    retry_backoff=1,
    retry_jitter=True,
    max_retries=5,
)
def send_notification(self: Any, notification_id: str, user: dict[str, Any], data: dict[str, Any]) -> str:
    import requests

    r = _resources()
    dedup_key = f"{r['prefix']}dedup:{notification_id}"
    if self.request.retries == 0 and not r["redis"].set(dedup_key, b"1", nx=True, ex=86_400):
        return "duplicate"
    pg = r["pg"]
    pg.execute(
        f"INSERT INTO {TABLE} (id, user_id, channel, status, created_at) VALUES (%s, %s, 'email', "
        "'sending', now()) ON CONFLICT (id) DO UPDATE SET status = 'sending', updated_at = now()",
        (notification_id, user["id"]),
    )
    context = {"user": user, "data": data, "notification": {"id": notification_id}}
    body = {
        "personalizations": [
            {
                "to": [{"email": user["email"]}],
                "custom_args": {
                    "herald_notification_id": notification_id,
                    "herald_delivery_id": notification_id,
                },
            }
        ],
        "from": {"email": "bench@example.com", "name": "celery bench"},
        "subject": r["subject"].render(context),
        "content": [
            {"type": "text/plain", "value": r["text"].render(context)},
            {"type": "text/html", "value": r["html"].render(context)},
        ],
    }
    started = time.monotonic()
    try:
        answer = r["session"].post(r["url"], json=body, timeout=10)
    except requests.RequestException as exc:
        pg.execute(
            f"UPDATE {TABLE} SET status = 'retrying', updated_at = now() WHERE id = %s", (notification_id,)
        )
        raise RetryableSend(type(exc).__name__) from exc
    latency_ms = int((time.monotonic() - started) * 1000)
    if answer.status_code == 429 or answer.status_code >= 500:
        pg.execute(
            f"UPDATE {TABLE} SET status = 'retrying', updated_at = now() WHERE id = %s", (notification_id,)
        )
        raise RetryableSend(str(answer.status_code))
    status = "sent" if answer.status_code < 300 else "failed"
    pg.execute(
        f"UPDATE {TABLE} SET status = %s, provider_message_id = %s, latency_ms = %s, "
        "updated_at = now() WHERE id = %s",
        (status, answer.headers.get("X-Message-Id"), latency_ms, notification_id),
    )
    return status


SCHEMA_SQL = f"""
CREATE TABLE {TABLE} (
    id text PRIMARY KEY,
    user_id text NOT NULL,
    channel text NOT NULL,
    status text NOT NULL,
    provider_message_id text,
    latency_ms integer,
    created_at timestamptz NOT NULL,
    updated_at timestamptz
)
"""
