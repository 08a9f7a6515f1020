"""Shadow classification: what would a model upgrade change, on real traffic, before it
goes live (``[shadow] model_version``, ``sample``).

    ShadowRunner.from_config(config, metrics) -> ShadowRunner | None
    runner.submit(document, ctx, live_decision, rules, queue_id)    never blocks, never raises

For a sampled share of the messages the live model classified, after the live decision,
a background task classifies the same document with the shadow model (same tenant, same
request settings, ``model_version`` from ``[shadow]``), evaluates the same ``RuleSet`` on
that prediction, and compares the two decisions: rules that fired only with one model,
the verdicts, and the labels each model returned. It logs one ``shadow_diff`` line per
sampled message (ids, model versions, rule names, verdicts, label names; never the body)
and counts ``cm_gateway_shadow_messages_total{outcome}`` and
``cm_gateway_shadow_rule_diff_total{rule, direction}``. The outcome is ``different`` when
the fired rules or the verdict differ, ``same`` otherwise (label changes alone, e.g. a
probability that crossed the threshold without changing any rule, are logged, not
counted as different); ``error`` when the shadow call failed; ``dropped`` when
``max_in_flight`` shadow calls were already running.

Sampling is deterministic: a message is sampled when the hash of its document falls
under ``sample``, so a retried message is sampled again, the same way.

The mail never waits for the shadow: the reply does not depend on the task, shadow
errors are logged and counted only, and the shadow classifier is a stack of its own
(its own batcher, its own circuit breaker, its own dedup cache) so its results never
answer a live request and its slowness never holds a live batch. Shadow documents are
billed like any other (the own cache spares a retried message a second bill).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.classify import (
    BatchingClassifier,
    DedupClassifier,
    MemoryCache,
    circuit_breaker,
    make_classifier,
)
from gateway.config import Config
from gateway.context import CLASSIFIED, Classifier, MessageContext
from gateway.documents import RawEmailDocument, document_hash
from gateway.errors import ClassifierError, ClassifierTimeout, ConfigError
from gateway.logsetup import get_logger
from gateway.predictions import DocumentPrediction
from gateway.rules import Decision, RuleSet

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

__all__ = ["CLOSE_GRACE", "DecisionDiff", "ShadowRunner", "decision_diff", "is_sampled"]

# How long shutdown waits for shadow calls under way before cancelling them.
CLOSE_GRACE = 5.0
_SHADOW_CACHE_ENTRIES = 10_000
_SHADOW_REQUESTS = 2  # concurrent requests of the shadow batcher

_log = get_logger("cm-gateway.pipeline._shadow")


def is_sampled(document: RawEmailDocument, sample: float) -> bool:
    """Whether ``document`` belongs to the sampled share (the same answer every time)."""
    if sample <= 0.0:
        return False
    if sample >= 1.0:
        return True
    return int(document_hash(document)[:15], 16) / 16**15 < sample


def _fired(decision: Decision) -> tuple[str, ...]:
    # Audited rules count too: comparing models in audit mode is a natural first step.
    return tuple(m.rule for m in decision.matches)


def _verdict(decision: Decision) -> str:
    if decision.audit:
        return decision.audit_verdict or "deliver"
    return decision.verdict


def _labels(prediction: DocumentPrediction | None) -> set[str]:
    return {label.full_name for label in prediction.labels} if prediction else set()


@dataclass(frozen=True, slots=True)
class DecisionDiff:
    """How the shadow decision differs from the live one."""

    rules_only_live: tuple[str, ...]
    rules_only_shadow: tuple[str, ...]
    verdict_live: str
    verdict_shadow: str
    labels_only_live: tuple[str, ...]
    labels_only_shadow: tuple[str, ...]

    @property
    def different(self) -> bool:
        """The decisions differ: other rules fired, or another verdict."""
        return bool(
            self.rules_only_live
            or self.rules_only_shadow
            or self.verdict_live != self.verdict_shadow
        )


def decision_diff(
    live: Decision,
    shadow: Decision,
    live_prediction: DocumentPrediction | None,
    shadow_prediction: DocumentPrediction | None,
) -> DecisionDiff:
    """Compare two decisions on the same message (rule order kept, labels sorted)."""
    fired_live, fired_shadow = _fired(live), _fired(shadow)
    labels_live, labels_shadow = _labels(live_prediction), _labels(shadow_prediction)
    return DecisionDiff(
        rules_only_live=tuple(r for r in fired_live if r not in fired_shadow),
        rules_only_shadow=tuple(r for r in fired_shadow if r not in fired_live),
        verdict_live=_verdict(live),
        verdict_shadow=_verdict(shadow),
        labels_only_live=tuple(sorted(labels_live - labels_shadow)),
        labels_only_shadow=tuple(sorted(labels_shadow - labels_live)),
    )


def build_shadow_classifier(config: Config, metrics: GatewayMetrics | None = None) -> Classifier:
    """The shadow model's own stack: dedup (own cache) > batching > circuit > provider."""
    settings = config.classifier
    if settings.provider == "custom":
        raise ConfigError(
            "a shadow model needs provider = 'communications-mining' or 'emulator'"
            " (the custom provider has no model versions)",
            file=config.source,
            where="shadow.model_version",
        )
    version = config.shadow.model_version
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    try:
        provider = make_classifier(config, model_version=version)
    except ConfigError as exc:
        where = "shadow.model_version" if exc.where == "classifier.model_version" else exc.where
        raise ConfigError(exc.message, file=config.source, where=where) from None
    circuit = circuit_breaker(config, provider, metrics, name="shadow")
    batched = BatchingClassifier(
        circuit,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        send_when_idle=config.classifier.send_when_idle,
        max_in_flight=_SHADOW_REQUESTS,
    )
    cache = MemoryCache(
        ttl=config.cache.ttl, max_entries=min(_SHADOW_CACHE_ENTRIES, config.cache.max_entries)
    )
    return DedupClassifier(batched, cache)


class ShadowRunner:
    """Runs shadow classifications in the background, bounded, and reports the diffs."""

    def __init__(
        self,
        classifier: Classifier,
        *,
        sample: float,
        model_version: int | str,
        max_in_flight: int,
        timeout: float,
        threshold: float,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.classifier = classifier
        self.sample = sample
        self.model_version = model_version
        self.max_in_flight = max_in_flight
        self._timeout = timeout
        self._threshold = threshold
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(
        cls, config: Config, metrics: GatewayMetrics | None = None
    ) -> ShadowRunner | None:
        """The runner ``[shadow]`` asks for, or None when it is off (no model version, or
        ``sample = 0``). Raises ``ConfigError`` naming ``shadow.model_version``."""
        shadow = config.shadow
        if shadow.model_version == "" or shadow.sample <= 0.0:
            return None
        settings = config.classifier
        runner = cls(
            build_shadow_classifier(config, metrics),
            sample=shadow.sample,
            model_version=shadow.model_version,
            max_in_flight=shadow.max_in_flight,
            timeout=settings.deadline,
            threshold=config.classifier.default_threshold,
            metrics=metrics,
        )
        _log.info(
            "shadow_ready",
            model_version=shadow.model_version,
            sample=shadow.sample,
            max_in_flight=shadow.max_in_flight,
        )
        return runner

    @property
    def in_flight(self) -> int:
        """Shadow classifications under way."""
        return len(self._tasks)

    def submit(
        self,
        document: RawEmailDocument,
        ctx: MessageContext,
        live: Decision,
        rules: RuleSet,
        queue_id: str,
    ) -> bool:
        """Start the shadow run of one live-classified message when it is sampled; True
        when a task started. Never raises: the mail path must not notice the shadow."""
        try:
            if not ctx.status.classified or not is_sampled(document, self.sample):
                return False
            if len(self._tasks) >= self.max_in_flight:
                self._count("dropped")
                _log.debug("shadow_dropped", queue_id=queue_id, in_flight=len(self._tasks))
                return False
            task = asyncio.get_running_loop().create_task(
                self._run(document, ctx, live, rules, queue_id)
            )
        except Exception as exc:
            self._count("error")
            _log.error("shadow_failed", queue_id=queue_id, error=type(exc).__name__)
            return False
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(
        self,
        document: RawEmailDocument,
        ctx: MessageContext,
        live: Decision,
        rules: RuleSet,
        queue_id: str,
    ) -> None:
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    batch = await self.classifier.predict_raw_emails([document])
            except TimeoutError:
                raise ClassifierTimeout("no shadow prediction in time") from None
            if len(batch.predictions) != 1:
                raise ClassifierError(f"{len(batch.predictions)} predictions for 1")
            shadow_ctx = dataclasses.replace(
                ctx,
                prediction=batch.predictions[0],
                model_version=batch.model_version,
                status=CLASSIFIED,
            )
            decision = rules.evaluate(shadow_ctx, default_threshold=self._threshold)
            diff = decision_diff(live, decision, ctx.prediction, shadow_ctx.prediction)
        except Exception as exc:
            # Logged by type and kind only: an exception's text may quote the message.
            self._count("error")
            _log.warning(
                "shadow_failed",
                queue_id=queue_id,
                message_id=ctx.message_id,
                shadow_model_version=self.model_version,
                error=getattr(exc, "kind", type(exc).__name__),
            )
            return
        self._report(diff, ctx, shadow_ctx.model_version, queue_id)

    def _report(
        self, diff: DecisionDiff, ctx: MessageContext, shadow_version: int | None, queue_id: str
    ) -> None:
        outcome = "different" if diff.different else "same"
        self._count(outcome)
        if self.metrics is not None:
            for rule in diff.rules_only_live:
                self.metrics.shadow_rule_diff.labels(rule=rule, direction="only_live").inc()
            for rule in diff.rules_only_shadow:
                self.metrics.shadow_rule_diff.labels(rule=rule, direction="only_shadow").inc()
        _log.info(
            "shadow_diff",
            outcome=outcome,
            queue_id=queue_id,
            message_id=ctx.message_id,
            live_model_version=ctx.model_version,
            shadow_model_version=shadow_version,
            rules_only_live=list(diff.rules_only_live),
            rules_only_shadow=list(diff.rules_only_shadow),
            verdict_live=diff.verdict_live,
            verdict_shadow=diff.verdict_shadow,
            labels_only_live=list(diff.labels_only_live),
            labels_only_shadow=list(diff.labels_only_shadow),
        )

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.shadow_messages.labels(outcome=outcome).inc()

    async def aclose(self, grace: float = CLOSE_GRACE) -> None:
        """Let shadow calls under way finish (at most ``grace`` seconds), cancel the
        rest, and close the shadow classifier."""
        try:
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                    _log.info("shadow_cancelled", tasks=len(pending))
        finally:
            await self.classifier.aclose()
