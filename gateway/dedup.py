"""Never bill one message twice: predictions cached by Message-ID + document hash.

When the next hop tempfails, the sending MTA retries the whole message minutes later;
the retry must reuse the first prediction instead of paying for a second one. The key is
the document's ``comment_id`` (from the Message-ID) plus a hash of the whole document, so
a different message that reuses a Message-ID is still classified. Concurrent copies of
the same document (a retry arriving while the first attempt is still being classified)
share one in-flight request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .context import Classifier
from .documents import RawEmailDocument
from .payload import document_hash
from .predictions import DocumentPrediction, ModelInfo, PredictionBatch

if TYPE_CHECKING:
    from .metrics import GatewayMetrics

__all__ = ["DedupClassifier", "MemoryCache", "dedup_key"]

_Entry = tuple[DocumentPrediction, ModelInfo | None]


def dedup_key(document: RawEmailDocument) -> str:
    """``<comment_id>:<sha256 of the canonical document>``."""
    return f"{document.get('comment_id', '')}:{document_hash(document)}"


class MemoryCache:
    """An LRU bounded by entries, with a TTL per entry."""

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, _Entry]] = OrderedDict()

    def get(self, key: str) -> _Entry | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, entry = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry

    def put(self, key: str, entry: _Entry) -> None:
        self._data[key] = (time.monotonic() + self._ttl, entry)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class DedupClassifier:
    """A ``Classifier`` that answers repeated documents from the cache."""

    def __init__(self, inner: Classifier, cache: MemoryCache) -> None:
        self._inner = inner
        self._cache = cache
        self._in_flight: dict[str, asyncio.Future[_Entry]] = {}
        self.hits = 0
        self.misses = 0
        self.metrics: GatewayMetrics | None = None

    @property
    def description(self) -> str:
        return self._inner.description

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        keys = [dedup_key(d) for d in documents]
        results: dict[int, _Entry] = {}
        waits: dict[int, asyncio.Future[_Entry]] = {}
        todo: list[int] = []
        for i, key in enumerate(keys):
            cached = self._cache.get(key)
            if cached is not None:
                results[i] = cached
                self.hits += 1
            elif key in self._in_flight:
                waits[i] = self._in_flight[key]
                self.hits += 1
            else:
                todo.append(i)
                self.misses += 1
        if self.metrics is not None:
            hits = len(documents) - len(todo)
            if hits:
                self.metrics.cache_hits.inc(hits)
            if todo:
                self.metrics.cache_misses.inc(len(todo))
        # One request per distinct key: the same message twice in one call bills once.
        first: dict[str, int] = {}
        for i in todo:
            first.setdefault(keys[i], i)
        loop = asyncio.get_running_loop()
        mine: dict[str, asyncio.Future[_Entry]] = {}
        for key in first:
            mine[key] = self._in_flight[key] = loop.create_future()
        try:
            if mine:
                unique = list(first.values())
                batch = await self._inner.predict_raw_emails([documents[i] for i in unique])
                for i, prediction in zip(unique, batch.predictions, strict=True):
                    entry = (prediction, batch.model)
                    self._cache.put(keys[i], entry)
                    mine[keys[i]].set_result(entry)
                for i in todo:
                    results[i] = mine[keys[i]].result()
            for i, fut in waits.items():
                results[i] = await asyncio.shield(fut)
        except BaseException as exc:
            for fut in mine.values():
                if not fut.done():
                    if isinstance(exc, Exception):
                        fut.set_exception(exc)
                        fut.exception()  # waiters still see it; nobody waiting is fine too
                    else:
                        fut.cancel()
            raise
        finally:
            for key, fut in mine.items():
                if self._in_flight.get(key) is fut:
                    del self._in_flight[key]
        ordered = [results[i] for i in range(len(documents))]
        model = next((m for _, m in ordered if m is not None), None)
        return PredictionBatch(predictions=tuple(p for p, _ in ordered), model=model)

    async def aclose(self) -> None:
        await self._inner.aclose()
