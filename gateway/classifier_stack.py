"""The classifier ``serve`` talks to, assembled from layers (outermost first):

    DedupClassifier      a retried message reuses its prediction (never billed twice)
    BatchingClassifier   concurrent messages share one predict-raw-emails call
    <provider>           make_classifier(config): HTTP client, custom endpoint or emulator

Each layer is a ``context.Classifier``; a test or tool may pass its own inner classifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .batcher import BatchingClassifier
from .config import Config
from .context import Classifier
from .dedup import DedupClassifier, MemoryCache
from .logsetup import get_logger

if TYPE_CHECKING:
    from .metrics import GatewayMetrics

__all__ = ["build_classifier_stack"]

_log = get_logger("cm-gateway.classifier")


def build_classifier_stack(
    config: Config, inner: Classifier, metrics: GatewayMetrics | None = None
) -> Classifier:
    """Wrap ``inner`` in the batching and dedup layers ``config`` describes."""
    settings = config.classifier
    batched = BatchingClassifier(
        inner,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_in_flight=settings.max_in_flight,
    )
    batched.metrics = metrics
    if not config.cache.url.startswith("memory:"):
        _log.warning("cache_backend_unsupported", url_scheme=config.cache.url.split(":")[0])
    cache = MemoryCache(ttl=config.cache.ttl, max_entries=config.cache.max_entries)
    dedup = DedupClassifier(batched, cache)
    dedup.metrics = metrics
    return dedup
