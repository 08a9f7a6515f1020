"""The classifier ``serve`` talks to, assembled from layers (outermost first):

    DedupClassifier      a retried message reuses its prediction (never billed twice)
    BatchingClassifier   concurrent messages share one predict-raw-emails call
    CircuitBreaker       after repeated failures, fail at once for a cool-down (circuit.py;
                         wrapped around the provider by ``pipeline.build_processor``)
    <provider>           make_classifier(config): HTTP client, custom endpoint or emulator

Each layer is a ``context.Classifier``; a test or tool may pass its own inner classifier.
With ``[smtp] workers > 1`` and ``[classifier] shared_batcher``, the whole stack runs once,
in the batcher process (``ops._batcher_process``), and each worker holds a ``_batch_client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.context import Classifier
from gateway.logsetup import get_logger

from ._batcher import BatchingClassifier
from ._circuit import circuit_breaker
from ._dedup import DedupClassifier, MemoryCache, PredictionCache, TieredCache
from ._providers import make_classifier
from ._threads import MemoryThreads, ThreadMemory

if TYPE_CHECKING:
    from ._metrics import ClassifierMetrics

__all__ = [
    "build_cache",
    "build_classifier_stack",
    "build_live_classifier",
    "build_thread_memory",
    "threads_in_process",
]

_log = get_logger("cm-gateway.classifier")


def build_live_classifier(config: Config, metrics: ClassifierMetrics | None = None) -> Classifier:
    """The configured provider behind the circuit breaker, batched and deduplicated."""
    provider = make_classifier(config, on_retry=metrics.api_retry if metrics else None)
    # Between the batcher and the provider: a failed batch counts once, and the dedup
    # cache above still answers repeated messages while the circuit is open.
    circuit = circuit_breaker(config, provider, metrics)
    return build_classifier_stack(config, circuit, metrics)


def build_classifier_stack(
    config: Config, inner: Classifier, metrics: ClassifierMetrics | None = None
) -> Classifier:
    """Wrap ``inner`` in the batching and dedup layers ``config`` describes."""
    settings = config.classifier
    batched = BatchingClassifier(
        inner,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        send_when_idle=settings.send_when_idle,
        min_batch=settings.min_batch,
        target_batch=0 if settings.target_batch == "auto" else settings.target_batch,
        adaptive=settings.target_batch == "auto",
        max_in_flight=settings.max_in_flight,
        metrics=metrics,
    )
    return DedupClassifier(batched, build_cache(config), metrics=metrics)


def build_cache(config: Config) -> PredictionCache:
    """The dedup cache ``[cache] url`` names: ``memory://``, or a SQLite file that outlives
    restarts, or Redis shared between instances, each behind a local memory tier (a retry
    to this instance needs no disk or network)."""
    local = MemoryCache(ttl=config.cache.ttl, max_entries=config.cache.max_entries)
    if config.cache.url.startswith("memory:"):
        return local
    if config.cache.url.startswith("sqlite:"):
        from ._cache_sqlite import SqliteCache

        on_disk = SqliteCache(
            config.cache.url, ttl=config.cache.ttl, max_entries=config.cache.max_entries
        )
        _log.info("cache_backend", backend=on_disk.description)
        return TieredCache(local, on_disk)
    # Imported here: the redis package is only needed by those who configure it.
    from ._cache_redis import RedisCache

    shared = RedisCache(config.cache.url, ttl=config.cache.ttl)
    _log.info("cache_backend", backend=shared.description)
    return TieredCache(local, shared)


def threads_in_process(config: Config) -> bool:
    """Does ``build_thread_memory`` keep the memory in this process (``memory://``,
    ``sqlite://``)? Then workers share it through the batcher process."""
    return config.cache.url.startswith(("memory:", "sqlite:"))


def build_thread_memory(config: Config) -> ThreadMemory:
    """The conversation memory of ``thread`` conditions, in the dedup cache's backend
    (``[cache] url``) with its TTL: Redis is shared by every worker and instance. With
    ``memory://`` or ``sqlite://`` it is this process's memory (a restart forgets)."""
    if threads_in_process(config):
        return MemoryThreads(ttl=config.cache.ttl, max_entries=config.cache.max_entries)
    from ._cache_redis import RedisCache

    return RedisCache(config.cache.url, ttl=config.cache.ttl)
