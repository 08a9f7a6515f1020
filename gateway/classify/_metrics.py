"""What the classifier layers report, and how a batcher process hands it to workers.

The batcher, the circuit breaker, the dedup layer and the API client report through the
small ``ClassifierMetrics`` protocol, which ``metrics.GatewayMetrics`` implements. With a
shared batcher (``ops._batcher_process``), those layers run in their own process, which has no
metrics endpoint: ``MetricEvents`` records what they report as JSON-able events, the
batcher process sends them along with its replies, and each worker ``replay``s what it
receives into its own ``GatewayMetrics``. Every event goes to exactly one worker, so the
workers' counters still add up to the whole; the circuit's state (a gauge) goes to all.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.errors import ClassifierError, error_for_kind

__all__ = ["ClassifierMetrics", "MetricEvents", "replay"]


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class ClassifierMetrics(Protocol):
    """The metrics the classifier layers write (``GatewayMetrics`` has them all)."""

    @property
    def cache_hits(self) -> _Counter: ...

    @property
    def cache_misses(self) -> _Counter: ...

    def api_request(self, documents: int) -> None: ...

    def api_result(self, documents: int, error: BaseException | None) -> None: ...

    def api_retry(self, error: BaseException) -> None: ...

    def circuit_changed(
        self, classifier: str, state: str, value: int, previous: str | None
    ) -> None: ...

    def batcher_learned(self, latency: float, target: int) -> None: ...


# One event: a list whose first item names it (JSON has no tuples).
Event = list[Any]


def _kind(error: BaseException | None) -> str | None:
    if error is None:
        return None
    kind = getattr(error, "kind", None)
    return kind if isinstance(kind, str) else "unexpected"


class _EventCounter:
    def __init__(self, events: MetricEvents, name: str) -> None:
        self._events = events
        self._name = name

    def inc(self, amount: float = 1) -> None:
        self._events.pending.append([self._name, amount])


class MetricEvents:
    """A ``ClassifierMetrics`` that records events for ``take`` instead of counting."""

    def __init__(self) -> None:
        self.pending: list[Event] = []
        # The latest state of each circuit, sent with every reply (a gauge, not a count).
        self.circuits: dict[str, list[Any]] = {}
        # The adaptive batcher's latest learned latency and target, also sent with every
        # reply: each worker shows the batcher's current values.
        self.gauges: dict[str, float] = {}
        self._hits = _EventCounter(self, "cache_hits")
        self._misses = _EventCounter(self, "cache_misses")

    @property
    def cache_hits(self) -> _Counter:
        return self._hits

    @property
    def cache_misses(self) -> _Counter:
        return self._misses

    def api_request(self, documents: int) -> None:
        # Recorded with its result: a worker that replayed the start of a request but not
        # its end would show it in flight for ever.
        pass

    def api_result(self, documents: int, error: BaseException | None) -> None:
        self.pending.append(["api", documents, _kind(error)])

    def api_retry(self, error: BaseException) -> None:
        self.pending.append(["retry", _kind(error) or type(error).__name__])

    def circuit_changed(
        self, classifier: str, state: str, value: int, previous: str | None
    ) -> None:
        self.circuits[classifier] = [state, value]
        if previous is not None:
            self.pending.append(["transition", classifier, state, value, previous])

    def batcher_learned(self, latency: float, target: int) -> None:
        self.gauges = {"latency": latency, "target": target}

    def take(self) -> list[Event]:
        """The events recorded since the last ``take``."""
        events, self.pending = self.pending, []
        return events


def _error(kind: str | None) -> ClassifierError | None:
    return None if kind is None else error_for_kind(kind, "")


def replay(
    events: list[Event],
    circuits: dict[str, list[Any]],
    into: ClassifierMetrics,
    gauges: dict[str, float] | None = None,
) -> None:
    """Count ``events`` (from ``MetricEvents.take``) and set the circuit and batcher gauges."""
    for event in events:
        name = event[0]
        if name == "api":
            into.api_request(event[1])
            into.api_result(event[1], _error(event[2]))
        elif name == "cache_hits":
            into.cache_hits.inc(event[1])
        elif name == "cache_misses":
            into.cache_misses.inc(event[1])
        elif name == "retry":
            into.api_retry(error_for_kind(event[1], ""))
        elif name == "transition":
            into.circuit_changed(event[1], event[2], event[3], event[4])
    for classifier, (state, value) in circuits.items():
        into.circuit_changed(classifier, state, value, None)
    if gauges:
        into.batcher_learned(gauges["latency"], int(gauges["target"]))
