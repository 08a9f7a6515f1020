"""The classifier: the Communications Mining client and everything in front of it.

Layers, outermost first: dedup cache (memory or Redis: never bill one message twice),
circuit breaker, micro-batcher, then the provider (the API client, a custom endpoint or
the in-process emulator). ``build_live_classifier(config)`` assembles them; with
``[smtp] workers > 1`` a worker reaches the shared batcher process through
``RemoteClassifier``. ``build_thread_memory(config)``: the conversation memory of
``thread`` rule conditions, in the same backend and TTL as the dedup cache (with workers
and a cache in memory, the batcher process keeps it: ``RemoteThreads``).
"""

from __future__ import annotations

from ._batch_client import RemoteClassifier, RemoteThreads
from ._batch_wire import FrameError, decode_request, encode_reply, read_frame
from ._batcher import BatchingClassifier
from ._circuit import circuit_breaker
from ._client import CommunicationsMiningClient
from ._dedup import DedupClassifier, MemoryCache
from ._metrics import MetricEvents
from ._providers import make_classifier, model_validation
from ._responses import parse_prediction_batch
from ._stack import build_live_classifier, build_thread_memory, threads_in_process
from ._threads import MemoryThreads, ThreadMemory

__all__ = [
    "BatchingClassifier",
    "CommunicationsMiningClient",
    "DedupClassifier",
    "FrameError",
    "MemoryCache",
    "MemoryThreads",
    "MetricEvents",
    "RemoteClassifier",
    "RemoteThreads",
    "ThreadMemory",
    "build_live_classifier",
    "build_thread_memory",
    "circuit_breaker",
    "decode_request",
    "encode_reply",
    "make_classifier",
    "model_validation",
    "parse_prediction_batch",
    "read_frame",
    "threads_in_process",
]
