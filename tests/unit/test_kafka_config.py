"""The Kafka configuration: URLs, credentials, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald.adapters.kafka_client import parse_kafka_url
from herald.adapters.queue.kafka import group_id, lane_topic, record_ids
from herald.config import load_settings
from herald.domain.errors import ConfigurationError


def test_bootstrap_servers_default_port_and_tls() -> None:
    conn = parse_kafka_url("kafka://k1,k2:9093", key="events.kafka_url")
    assert conn.servers == ("k1:9092", "k2:9093") and not conn.tls and conn.sasl_mechanism is None
    assert conn.client_args() == {"bootstrap_servers": "k1:9092,k2:9093"}
    tls = parse_kafka_url("kafkas://broker:9094", key="queue.url").client_args()
    assert tls["security_protocol"] == "SSL" and tls["ssl_context"] is not None


def test_credentials_in_the_url_or_as_keys_select_sasl() -> None:
    conn = parse_kafka_url("kafkas://herald:s%40cret@broker:9094", key="queue.url")
    args = conn.client_args()
    assert (args["security_protocol"], args["sasl_mechanism"]) == ("SASL_SSL", "PLAIN")
    assert (args["sasl_plain_username"], args["sasl_plain_password"]) == ("herald", "s@cret")
    scram = parse_kafka_url(
        "kafka://broker", key="k", sasl_mechanism="scram-sha-512", username="u", password="p"
    ).client_args()
    assert (scram["security_protocol"], scram["sasl_mechanism"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert "s@cret" not in repr(conn.servers)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://broker", "kafka:// or kafkas://"),
        ("kafka://", "names no broker"),
        ("kafka://broker:notaport", "not host:port"),
        ("kafka://broker:0", "not host:port"),
    ],
)
def test_bad_urls_name_the_key(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_kafka_url(url, key="events.kafka_url")
    assert "events.kafka_url" in info.value.detail and message in info.value.detail


def test_sasl_needs_a_password() -> None:
    with pytest.raises(ConfigurationError, match="username and a password"):
        parse_kafka_url("kafka://broker", key="queue.url", sasl_mechanism="PLAIN", username="u")


def test_configuration_keys(tmp_path: Path) -> None:
    path = tmp_path / "herald.toml"
    path.write_text('[queue]\nurl = "kafka://k:9092"\n[events]\nkafka_url = "kafkas://k:9094"\n')
    settings = load_settings(path)
    assert settings.queue.url == "kafka://k:9092"
    assert (settings.events.kafka_topic, settings.events.kafka_group) == ("herald.events", "herald-events")
    path.write_text('[events]\nkafka_url = "http://k:9092"\n')
    with pytest.raises(ConfigurationError, match=r"events\.kafka_url"):
        load_settings(path)
    path.write_text('[queue]\nurl = "kafka://k"\nkafka_partitions = 0\n')
    with pytest.raises(ConfigurationError, match=r"queue\.kafka_partitions"):
        load_settings(path)


def test_topic_and_group_names() -> None:
    assert lane_topic("herald", "email", 0) == "herald.q.email.critical"
    assert lane_topic("herald", "sms", 3) == "herald.q.sms.low"
    assert group_id("herald", "email", (1, 0)) == "herald.g.email.critical-high"
    assert record_ids(b"a\nb\n\nc") == ["a", "b", "c"] and record_ids(None) == []
