"""Prometheus metrics: counters kept by this process, gauges read at scrape.

What an on-call engineer reads (and ``deploy/prometheus/herald-alerts.yml`` alerts on):

* ``herald_http_requests_total{method, route, status}``: every API request, by route template
  (``/v1/notifications/{notification_id}``, never the raw path) and status class (``2xx``);
* ``herald_attempt_latency_seconds{channel, provider, outcome}``: each provider call;
* ``herald_circuit_open{channel, provider}``: 1 while a provider's circuit breaker is open or
  probing (half open), and ``herald_provider_held`` while a configuration error holds it;
* ``herald_dead_letters{channel, provider}``: deliveries in the dead-letter queue;
* ``herald_ambiguous_sends_total``: sends the provider may have (a worker lost mid-send);
* ``herald_queue_depth{channel, lane}`` and ``herald_queue_oldest_age_seconds{channel, lane}``;
* ``herald_event_ingestion_lag_seconds``: how long the oldest accepted notification (or event)
  has waited to be routed; ``herald_callback_lag_seconds``: provider event time to herald.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from herald.domain.models import DeliveryResult, Outcome, Priority
from herald.ports import Store
from herald.services.deliver import DeliveryObserver

_CIRCUIT_OPEN = frozenset({"open", "half_open"})


def status_class(code: int) -> str:
    return f"{code // 100}xx" if 100 <= code < 600 else "other"


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
        self.dead_letters = Gauge(
            "herald_dead_letters",
            "Deliveries in the dead-letter queue",
            ["channel", "provider"],
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
        self.queue_age = Gauge(
            "herald_queue_oldest_age_seconds",
            "How long the oldest due delivery of each channel and lane has waited",
            ["channel", "lane"],
            registry=self.registry,
        )
        self.circuit_open = Gauge(
            "herald_circuit_open",
            "1 while a provider's circuit breaker is open or half open, else 0",
            ["channel", "provider"],
            registry=self.registry,
        )
        self.provider_held = Gauge(
            "herald_provider_held",
            "1 while a configuration error holds a provider",
            ["channel", "provider"],
            registry=self.registry,
        )
        self.ingestion_lag = Gauge(
            "herald_event_ingestion_lag_seconds",
            "Age of the oldest accepted notification or event not yet routed (0: none waiting)",
            registry=self.registry,
        )
        self.callback_lag = Histogram(
            "herald_callback_lag_seconds",
            "From a provider's or client's event time to herald recording it",
            ["source"],
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
        )
        self.ambiguous_total = Gauge(
            "herald_ambiguous_attempts",
            "Ambiguous attempts in the status log (every process)",
            registry=self.registry,
        )
        self.requests = Counter(
            "herald_http_requests", "API requests", ["method", "route", "status"], registry=self.registry
        )
        self._request_children: dict[tuple[str, str, str], Counter] = {}

    def request(self, method: str, route: str, status: int) -> None:
        key = (method, route, status_class(status))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()

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

    def callback(self, source: str, lag_seconds: float) -> None:
        self.callback_lag.labels(source).observe(max(0.0, lag_seconds))

    async def render(
        self,
        store: Store,
        consumers: list[dict[str, Any]] | None = None,
        *,
        now: float,
        circuits: Iterable[tuple[str, str, str]] = (),
        held: Mapping[str, Mapping[str, object]] | None = None,
    ) -> bytes:
        """``consumers``: the Kafka consumers' state and lag; ``circuits``: (channel, provider,
        breaker state); ``held``: providers held by a configuration error ({provider: {"channel": …}})."""
        self.kafka_lag.clear()
        self.kafka_state.clear()
        for c in consumers or ():
            self.kafka_state.labels(c["group"], c["state"]).set(1)
            for topic, lag in c["topics"].items():
                self.kafka_lag.labels(c["group"], topic).set(lag)
        self.deliveries.clear()
        self.dead_letters.clear()
        for channel, status, provider, count in await store.delivery_counts():
            self.deliveries.labels(channel, provider or "-", status).set(count)
            if status == "dead":
                self.dead_letters.labels(channel, provider or "-").inc(count)
        self.queue_depth.clear()
        self.queue_age.clear()
        for channel, rank, count, age in await store.queue_ages(now=now):
            lane = Priority.from_rank(rank).value
            self.queue_depth.labels(channel, lane).set(count)
            self.queue_age.labels(channel, lane).set(age)
        oldest = await store.oldest_unrouted()
        self.ingestion_lag.set(0.0 if oldest is None else max(0.0, now - oldest))
        self.ambiguous_total.set(await store.ambiguous_count())
        self.circuit_open.clear()
        for channel, provider, state in circuits:
            self.circuit_open.labels(channel, provider).set(1 if state in _CIRCUIT_OPEN else 0)
        self.provider_held.clear()
        for provider, info in (held or {}).items():
            self.provider_held.labels(str(info.get("channel", "-")), provider).set(1)
        return generate_latest(self.registry)
