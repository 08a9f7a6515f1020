"""``build_processor``: the pipeline a configuration describes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.classify import ThreadMemory, build_live_classifier, build_thread_memory
from gateway.config import Config
from gateway.context import Classifier
from gateway.deliver import Delivery, make_next_hops
from gateway.logsetup import get_logger
from gateway.rules import load_rules

from ._pipeline import Pipeline
from ._shadow import ShadowRunner

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

__all__ = ["build_processor"]

_log = get_logger("cm-gateway.pipeline._pipeline")


def build_processor(
    config: Config,
    *,
    classifier: Classifier | None = None,
    delivery: Delivery | None = None,
    metrics: GatewayMetrics | None = None,
    threads: ThreadMemory | None = None,
) -> Pipeline:
    """The pipeline ``config`` describes: rules loaded once (raises ``RuleFileError``),
    the configured classifier (deduplicated, batched, behind a circuit breaker), the
    shadow model when ``[shadow]`` asks for one, and the next hop. ``classifier`` and
    ``delivery`` replace the configured ones (tests, tools), and ``threads`` the configured
    conversation memory (a worker's, kept by the batcher process)."""
    rules = load_rules(config.rule_paths(), mode=config.rules.mode, routes=config.downstream.routes)
    if classifier is None:
        classifier = build_live_classifier(config, metrics)
    shadow = ShadowRunner.from_config(config, metrics)
    next_hops = make_next_hops(config, delivery)
    delivery = next_hops.default
    for name, hop in next_hops.items():
        if metrics is not None and (pool := getattr(hop, "pool", None)) is not None:
            metrics.track_pool(pool.stats, route=name)
    _log.info(
        "pipeline_ready",
        classifier=classifier.description,
        rules=len(rules),
        rules_mode=config.rules.mode,
        downstream=next_hops.description,
        shadow=config.shadow.model_version if shadow is not None else None,
    )
    return Pipeline(
        config,
        classifier=classifier,
        rules=rules,
        delivery=delivery,
        metrics=metrics,
        shadow=shadow,
        threads=threads if threads is not None else build_thread_memory(config),
        next_hops=next_hops,
    )
