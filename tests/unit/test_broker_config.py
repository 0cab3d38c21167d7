"""queue.url and the rabbitmq extra: clear errors, and the sql queue unchanged by default."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from herald.adapters.queue.sql import SqlQueue
from herald.bootstrap import build_queue, build_store
from herald.config import load_settings
from herald.domain.errors import ConfigurationError
from herald.testing import FakeClock
from tests.support.herald import make_settings


def test_queue_url_must_be_sql_amqp_or_kafka(tmp_path: Path) -> None:
    cfg = tmp_path / "herald.toml"
    cfg.write_text('[queue]\nurl = "redis://localhost"\n')
    with pytest.raises(ConfigurationError, match=r"queue\.url.*'sql', an amqp:// URL or a kafka:// URL"):
        load_settings(cfg)
    cfg.write_text('[queue]\nurl = "amqp://guest:guest@localhost/"\nprefix = "bad prefix!"\n')
    with pytest.raises(ConfigurationError, match=r"queue\.prefix"):
        load_settings(cfg)


def test_sql_is_the_default_and_writes_no_outbox(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = build_store(settings)
    assert settings.queue.url == "sql" and store.outbox is False
    queue, relay = build_queue(settings, store, FakeClock())
    assert isinstance(queue, SqlQueue) and relay is None


def test_amqp_turns_the_outbox_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, queue={"url": "amqp://guest:guest@127.0.0.1:1/"})
    store = build_store(settings)
    assert store.outbox is True
    store.outbox = False  # a store built elsewhere: build_queue turns it on
    _queue, relay = build_queue(settings, store, FakeClock())
    assert store.outbox is True and relay is not None


def test_missing_aio_pika_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path, queue={"url": "amqp://guest:guest@127.0.0.1/"})
    for name in [
        m for m in sys.modules if m == "aio_pika" or m.startswith(("aio_pika.", "herald.adapters.queue.amqp"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aio_pika", None)  # import aio_pika -> ModuleNotFoundError
    with pytest.raises(ConfigurationError, match=r"pip install 'herald\[rabbitmq\]'"):
        build_queue(settings, build_store(settings), FakeClock())
