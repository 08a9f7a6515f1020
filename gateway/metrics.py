"""Prometheus metrics; served with the health endpoints by ``gateway.ops`` (the
``[metrics] listen`` server).

    GatewayMetrics()                 the metric objects, in a registry of their own

The registry is not prometheus-client's global one, so several gateways (tests) can run
in one process. With ``[smtp] workers > 1`` every worker has its own registry and the
workers share the metrics port (SO_REUSEPORT); the worker that takes a scrape adds up
every worker's samples (``gateway.ops``, ``_metrics_peers``).

The circuit breaker and the shadow model (``gateway.classify``) report
here too: ``cm_gateway_circuit_state{classifier}``, ``cm_gateway_circuit_transitions_total``,
``cm_gateway_shadow_messages_total{outcome}``, ``cm_gateway_shadow_rule_diff_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.logsetup import get_logger

__all__ = ["STAGES", "GatewayMetrics", "message_outcome"]

STAGES = ("parse", "classify", "rules", "relay", "total")
_STAGE_FIELDS = tuple((stage, f"{stage}_ms") for stage in STAGES)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

_log = get_logger("cm-gateway.metrics")


def message_outcome(fields: Mapping[str, Any], code: int) -> str:
    """``delivered`` / ``discarded`` (2xx, no recipient) / ``deferred`` (4xx) /
    ``rejected`` (5xx), from the message's log fields and our reply code."""
    if 200 <= code < 300:
        return "discarded" if fields.get("recipients") == 0 else "delivered"
    return "deferred" if 400 <= code < 500 else "rejected"


class GatewayMetrics:
    """The gateway's metric objects, registered in ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "cm_gateway_messages", "Messages answered, by outcome", ["outcome"], registry=r
        )
        # The same count split by front (smtp, milter): its own metric, so that the
        # series of cm_gateway_messages_total keep their labels.
        self.front_messages = Counter(
            "cm_gateway_front_messages",
            "Messages answered, by front and outcome",
            ["front", "outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "cm_gateway_stage_seconds", "Time per pipeline stage", ["stage"], registry=r
        )
        self.batch_size = Histogram(
            "cm_gateway_batch_size", "Documents per predict request", buckets=_BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batcher_latency = Gauge(
            "cm_gateway_batcher_latency_seconds",
            "The API latency the adaptive batcher has learned (target_batch auto)",
            registry=r,
        )
        self.batcher_target = Gauge(
            "cm_gateway_batcher_target_documents",
            "The batch size the adaptive batcher aims for now: half the documents it saw"
            " in flight at once lately",
            registry=r,
        )
        self.api_requests = Counter(
            "cm_gateway_api_requests", "Predict requests sent to the classifier", registry=r
        )
        self.api_errors = Counter(
            "cm_gateway_api_errors", "Failed predict requests, by kind", ["kind"], registry=r
        )
        self.documents_billed = Counter(
            "cm_gateway_documents_billed",
            "Documents in successful predict requests",
            registry=r,
        )
        self.cache_hits = Counter(
            "cm_gateway_cache_hits", "Documents answered from the dedup cache", registry=r
        )
        self.cache_misses = Counter(
            "cm_gateway_cache_misses", "Documents not in the dedup cache", registry=r
        )
        self.rule_hits = Counter(
            "cm_gateway_rule_hits", "Rules that matched, by rule name", ["rule"], registry=r
        )
        self.sessions_in_flight = Gauge(
            "cm_gateway_sessions_in_flight", "Open SMTP sessions", registry=r
        )
        self.api_in_flight = Gauge(
            "cm_gateway_api_requests_in_flight", "Predict requests under way", registry=r
        )
        self.rules_reload_failures = Counter(
            "cm_gateway_rules_reload_failures",
            "Rule reloads refused (the old rules stayed)",
            registry=r,
        )
        self.circuit_state = Gauge(
            "cm_gateway_circuit_state",
            "Classifier circuit breaker: 0 closed, 1 open, 2 half-open",
            ["classifier"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "cm_gateway_circuit_transitions",
            "Circuit breaker state changes, by the state entered",
            ["classifier", "state"],
            registry=r,
        )
        self.api_retries = Counter(
            "cm_gateway_api_retries",
            "Predict requests retried, by the kind of error that caused the retry",
            ["kind"],
            registry=r,
        )
        self.downstream_connections = Gauge(
            "cm_gateway_downstream_connections",
            "Pooled next-hop connections, by route and state (idle, in_use; size = the cap)",
            ["route", "state"],
            registry=r,
        )
        self.downstream_connection_events = Gauge(
            "cm_gateway_downstream_connection_events",
            "Next-hop connections created, reused, discarded, expired since start, by route",
            ["route", "event"],
            registry=r,
        )
        self.shadow_messages = Counter(
            "cm_gateway_shadow_messages",
            "Sampled messages classified by the shadow model, by outcome",
            ["outcome"],
            registry=r,
        )
        self.shadow_rule_diff = Counter(
            "cm_gateway_shadow_rule_diff",
            "Rules that fired with one model only (only_live / only_shadow)",
            ["rule", "direction"],
            registry=r,
        )
        # A scrape that adds up the workers sums workers_scraped (ops._metrics_peers).
        self.workers = Gauge("cm_gateway_workers", "Worker processes ([smtp] workers)", registry=r)
        self.workers_scraped = Gauge(
            "cm_gateway_workers_scraped",
            "Workers whose samples this scrape adds up (a silent one is left out)",
            registry=r,
        )
        self.workers.set(1)
        self.workers_scraped.set(1)
        # The labelled children observe_message uses, by label value: .labels() costs
        # a lock, a tuple and a dict look-up per call, three times per message. Filled
        # on first use, not here: a child appears in /metrics as soon as it exists.
        # Nothing removes children from these metrics, so a cached one stays theirs.
        self._outcome_children: dict[str, Counter] = {}
        self._front_children: dict[tuple[str, str], Counter] = {}
        self._stage_children: dict[str, Histogram] = {}
        self._rule_children: dict[str, Counter] = {}

    def observe_message(self, fields: Mapping[str, Any], code: int) -> None:
        """Count one answered message from its log fields (``gateway.pipeline``'s message log)."""
        outcome = message_outcome(fields, code)
        counter = self._outcome_children.get(outcome)
        if counter is None:
            counter = self._outcome_children[outcome] = self.messages.labels(outcome=outcome)
        counter.inc()
        self._front(str(fields.get("front", "smtp")), outcome).inc()
        for stage, key in _STAGE_FIELDS:
            ms = fields.get(key)
            if isinstance(ms, int | float):
                histogram = self._stage_children.get(stage)
                if histogram is None:
                    histogram = self._stage_children[stage] = self.stage_seconds.labels(stage=stage)
                histogram.observe(ms / 1000)
        for rule in fields.get("rules_hit") or ():
            name = str(rule)
            hits = self._rule_children.get(name)
            if hits is None:
                hits = self._rule_children[name] = self.rule_hits.labels(rule=name)
            hits.inc()

    def _front(self, front: str, outcome: str) -> Counter:
        key = (front, outcome)
        counter = self._front_children.get(key)
        if counter is None:
            counter = self._front_children[key] = self.front_messages.labels(*key)
        return counter

    def message_failed(self, front: str = "smtp") -> None:
        """A message whose processing raised (answered ``451 4.3.0`` by the front)."""
        self.messages.labels(outcome="error").inc()
        self._front(front, "error").inc()

    def api_request(self, documents: int) -> None:
        """A predict call with ``documents`` documents goes to the classifier stack."""
        self.api_in_flight.inc()

    def api_result(self, documents: int, error: BaseException | None) -> None:
        """A predict call ended: a request (billed on success, counted by kind on
        failure), or nothing sent at all when the open circuit refused it."""
        self.api_in_flight.dec()
        kind = getattr(error, "kind", None) if error is not None else None
        if kind != "circuit-open":
            # Counted here rather than when sent, so a call the circuit refused (it never
            # left the process) is neither a request nor a batch.
            self.api_requests.inc()
            self.batch_size.observe(documents)
        if error is None:
            self.documents_billed.inc(documents)
        else:
            self.api_errors.labels(kind=kind if isinstance(kind, str) else "unexpected").inc()

    def circuit_changed(
        self, classifier: str, state: str, value: int, previous: str | None
    ) -> None:
        """The circuit of ``classifier`` entered ``state`` (gauge ``value``);
        ``previous`` None: it was just created."""
        self.circuit_state.labels(classifier=classifier).set(value)
        if previous is not None:
            self.circuit_transitions.labels(classifier=classifier, state=state).inc()

    def batcher_learned(self, latency: float, target: int) -> None:
        """The adaptive batcher's learned API latency (seconds) and batch target, after
        an answered call."""
        self.batcher_latency.set(latency)
        self.batcher_target.set(target)

    def track_sessions(self, count: Callable[[], int]) -> None:
        """Read the open-session count from ``count`` at every scrape."""
        self.sessions_in_flight.set_function(lambda: float(count()))

    def api_retry(self, error: BaseException) -> None:
        """One predict request retried after ``error``."""
        self.api_retries.labels(getattr(error, "kind", type(error).__name__)).inc()

    def track_pool(self, stats: Callable[[], Mapping[str, int]], route: str = "default") -> None:
        """Read a next hop's pool state from ``stats`` (``SmtpPool.stats``) at every
        scrape; ``route``: ``default`` for ``[downstream]``, else the route's name."""

        def reader(key: str) -> Callable[[], float]:
            return lambda: float(stats()[key])

        for state in ("idle", "in_use", "size"):
            self.downstream_connections.labels(route, state).set_function(reader(state))
        for event in ("created", "reused", "discarded", "expired"):
            self.downstream_connection_events.labels(route, event).set_function(reader(event))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
