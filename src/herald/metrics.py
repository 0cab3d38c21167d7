"""Prometheus metrics: counters kept by this process, gauges read from the status log at scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from herald.domain.models import DeliveryResult, Outcome, Priority
from herald.ports import Store
from herald.services.deliver import DeliveryObserver


class Metrics(DeliveryObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.results = Counter(
            "herald_delivery_results",
            "Delivery attempts finished by this process",
            ["channel", "provider", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "herald_attempt_latency_seconds",
            "Provider call latency per attempt",
            ["channel", "provider", "outcome"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.ambiguous = Counter(
            "herald_ambiguous_sends",
            "Sends whose outcome is unknown (the provider may have the message)",
            ["channel", "provider"],
            registry=self.registry,
        )
        self.refused = Counter(
            "herald_results_refused",
            "Results not recorded because the lease was lost",
            registry=self.registry,
        )
        self.config_errors = Counter(
            "herald_provider_config_errors",
            "Provider configuration errors",
            ["channel", "provider"],
            registry=self.registry,
        )
        self.deliveries = Gauge(
            "herald_deliveries",
            "Deliveries in the status log by channel, provider and status",
            ["channel", "provider", "status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "herald_queue_depth",
            "Deliveries waiting to be sent, by channel and priority lane",
            ["channel", "lane"],
            registry=self.registry,
        )
        self.kafka_lag = Gauge(
            "herald_kafka_consumer_lag",
            "Records of a topic not yet committed by this process's Kafka consumer "
            "(high watermark at its last fetch minus the committed offset, over its partitions)",
            ["group", "topic"],
            registry=self.registry,
        )
        self.kafka_state = Gauge(
            "herald_kafka_consumer_state",
            "1 for the state of this process's Kafka consumer of a group "
            "(consuming, paused: the database is down, disconnected, ...)",
            ["group", "state"],
            registry=self.registry,
        )
        self.requests = Counter(
            "herald_http_requests", "API requests", ["method", "route", "status"], registry=self.registry
        )

    def recorded(self, result: DeliveryResult, applied: bool) -> None:
        super().recorded(result, applied)
        if not applied:
            self.refused.inc()
            return
        a = result.attempt
        self.results.labels(result.channel, a.provider, result.new_status.value).inc()
        if a.latency_ms is not None and a.outcome != Outcome.EXPIRED:
            self.latency.labels(result.channel, a.provider, a.outcome.value).observe(a.latency_ms / 1000)
        if a.ambiguous:
            self.ambiguous.labels(result.channel, a.provider).inc()

    def config_error(self, channel: str, provider: str, detail: str) -> None:
        self.config_errors.labels(channel, provider).inc()

    async def render(self, store: Store, consumers: list[dict[str, Any]] | None = None) -> bytes:
        self.kafka_lag.clear()
        self.kafka_state.clear()
        for c in consumers or ():
            self.kafka_state.labels(c["group"], c["state"]).set(1)
            for topic, lag in c["topics"].items():
                self.kafka_lag.labels(c["group"], topic).set(lag)
        self.deliveries.clear()
        for channel, status, provider, count in await store.delivery_counts():
            self.deliveries.labels(channel, provider or "-", status).set(count)
        self.queue_depth.clear()
        for channel, rank, count in await store.queue_depth():
            self.queue_depth.labels(channel, Priority.from_rank(rank).value).set(count)
        return generate_latest(self.registry)
