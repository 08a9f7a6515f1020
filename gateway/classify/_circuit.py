"""A circuit breaker in front of the classifier: stop calling a model that keeps failing.

    CircuitBreaker(inner, failures=5, cooldown=30.0)     a ``Classifier`` layer

States (``cm_gateway_circuit_state``: 0 closed, 1 open, 2 half-open):

- **closed**: every call goes through. ``failures`` consecutive failed calls open the
  circuit; any success resets the count. Consecutive failures rather than a failure
  ratio: with batching one call carries many messages, calls are few, and a ratio over a
  window would need a minimum volume before it could say anything.
- **open**: for ``cooldown`` seconds every call fails at once with ``CircuitOpenError``
  (kind ``circuit-open``), so the pipeline applies ``on_error`` immediately instead of
  letting timeouts pile up.
- **half-open**: after the cool-down the next call is a probe, and the only call let
  through until it ends; the others fail at once. The probe's success closes the
  circuit; its failure opens it for another cool-down.

Failures are the answers that say the service is unwell: ``ClassifierUnavailable``
(5xx, 429, transport errors, timeouts) and ``MalformedResponseError``. A refusal of the
request itself (400/401/403/404/422) is answered at once and may be about one document
only, so it neither counts nor resets the count (it proves nothing either way).

It sits between the batcher and the provider: a failed batch counts once, whatever its
size, and the dedup cache above it still answers repeated messages while it is open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from gateway.config import Config
from gateway.context import Classifier
from gateway.documents import RawEmailDocument
from gateway.errors import CircuitOpenError, ClassifierUnavailable, MalformedResponseError
from gateway.logsetup import get_logger
from gateway.predictions import PredictionBatch

if TYPE_CHECKING:
    from ._metrics import ClassifierMetrics

__all__ = ["STATE_VALUES", "CircuitBreaker", "CircuitState", "circuit_breaker"]

CircuitState = Literal["closed", "open", "half-open"]
STATE_VALUES: dict[CircuitState, int] = {"closed": 0, "open": 1, "half-open": 2}

_log = get_logger("cm-gateway.classify._circuit")


def _counts_as_failure(exc: BaseException) -> bool:
    # Cancellation while a call is out means nobody waited for it to end: the service
    # was too slow, so it counts like the timeout it stands for.
    return isinstance(exc, ClassifierUnavailable | MalformedResponseError | asyncio.CancelledError)


class CircuitBreaker:
    """A ``Classifier`` that stops calling ``inner`` after repeated failures.

    ``failures`` = 0 turns it off (every call goes through). ``name`` labels its metrics
    and log lines (``live``, ``shadow``)."""

    def __init__(
        self,
        inner: Classifier,
        *,
        failures: int = 5,
        cooldown: float = 30.0,
        name: str = "live",
        metrics: ClassifierMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 0 or cooldown <= 0:
            raise ValueError("failures must be >= 0 and cooldown > 0")
        self._inner = inner
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self.name = name
        self.metrics = metrics
        self.state: CircuitState = "closed"
        self.consecutive_failures = 0
        self.refused = 0  # calls failed at once, for tests and logs
        self._opened_at = 0.0
        self._probing = False
        if metrics is not None:
            metrics.circuit_changed(name, "closed", 0, None)

    @property
    def description(self) -> str:
        return self._inner.description

    def _move(self, state: CircuitState, **fields: object) -> None:
        previous, self.state = self.state, state
        if state == "open":
            self._opened_at = self._clock()
            _log.warning(
                "circuit_opened",
                circuit=self.name,
                previous=previous,
                cooldown_s=self._cooldown,
                **fields,
            )
        else:
            _log.info("circuit_" + state.replace("-", "_"), circuit=self.name, previous=previous)
        if self.metrics is not None:
            self.metrics.circuit_changed(self.name, state, STATE_VALUES[state], previous)

    def _admit(self) -> bool:
        """May this call go out? True for a probe or a closed circuit."""
        if self.state == "closed":
            return True
        if self.state == "open" and self._clock() - self._opened_at >= self._cooldown:
            self._move("half-open")
        if self.state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        if self._threshold == 0:
            return await self._inner.predict_raw_emails(documents)
        if not self._admit():
            self.refused += 1
            raise CircuitOpenError(f"circuit open after {self.consecutive_failures} failures")
        probe = self.state == "half-open"
        try:
            result = await self._inner.predict_raw_emails(documents)
        except BaseException as exc:
            self._failed(exc, probe)
            raise
        finally:
            if probe:
                self._probing = False
        self._succeeded()
        return result

    def _failed(self, exc: BaseException, probe: bool) -> None:
        if not _counts_as_failure(exc):
            return
        self.consecutive_failures += 1
        kind = getattr(exc, "kind", type(exc).__name__)
        tripped = self.state == "closed" and self.consecutive_failures >= self._threshold
        if probe or tripped:
            self._move("open", failures=self.consecutive_failures, last_error=kind)

    def _succeeded(self) -> None:
        self.consecutive_failures = 0
        if self.state != "closed":
            self._move("closed")

    async def aclose(self) -> None:
        await self._inner.aclose()


def circuit_breaker(
    config: Config,
    inner: Classifier,
    metrics: ClassifierMetrics | None = None,
    *,
    name: str = "live",
    clock: Callable[[], float] = time.monotonic,
) -> CircuitBreaker:
    """``inner`` behind the breaker ``[classifier] circuit_failures / circuit_cooldown``
    describe."""
    settings = config.classifier
    return CircuitBreaker(
        inner,
        failures=settings.circuit_failures,
        cooldown=settings.circuit_cooldown,
        name=name,
        metrics=metrics,
        clock=clock,
    )
