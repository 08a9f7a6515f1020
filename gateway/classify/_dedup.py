"""Never bill one message twice: predictions cached by Message-ID + document hash.

When the next hop tempfails, the sending MTA retries the whole message minutes later;
the retry must reuse the first prediction instead of paying for a second one. The key is
the document's ``comment_id`` (from the Message-ID) plus a hash of the whole document, so
a different message that reuses a Message-ID is still classified. Concurrent copies of
the same document (a retry arriving while the first attempt is still being classified)
share one in-flight request.

The cache itself is pluggable (``PredictionCache``): ``MemoryCache`` in the process, or
``_cache_redis.RedisCache`` shared by several gateway instances, usually behind a
``TieredCache`` so that a retry reaching the same instance never needs the network.
A cache is an optimisation: a backend that fails answers "miss" and mail keeps flowing.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from pydantic import TypeAdapter

from gateway.context import Classifier
from gateway.documents import RawEmailDocument, document_hash
from gateway.predictions import DocumentPrediction, ModelInfo, PredictionBatch

if TYPE_CHECKING:
    from ._metrics import ClassifierMetrics

__all__ = [
    "CacheEntry",
    "DedupClassifier",
    "MemoryCache",
    "PredictionCache",
    "TieredCache",
    "dedup_key",
]

CacheEntry = tuple[DocumentPrediction, ModelInfo | None]
_Entry = CacheEntry


def dedup_key(document: RawEmailDocument) -> str:
    """``<comment_id>:<sha256 of the canonical document>``."""
    return f"{document.get('comment_id', '')}:{document_hash(document)}"


class PredictionCache(Protocol):
    """Where predictions are kept between attempts. Neither method may raise for a
    backend failure: a broken cache is a miss (``get``) or a no-op (``put``)."""

    async def get(self, key: str) -> CacheEntry | None:
        """The entry stored under ``key``, or None (absent, expired, unreadable)."""
        ...

    async def put(self, key: str, entry: CacheEntry) -> None:
        """Store ``entry`` under ``key`` for the cache's TTL."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


# Entries are kept as compressed JSON: as objects a prediction with a score of entities
# takes ~90 KB (the smallest ~4 KB), so ``max_entries = 100000`` could hold gigabytes;
# packed they take 0.3-1.5 KB, and only a hit (a retried message) pays for unpacking.
_ENTRY_JSON: TypeAdapter[_Entry] = TypeAdapter(tuple[DocumentPrediction, ModelInfo | None])


def _pack(entry: _Entry) -> bytes:
    return zlib.compress(_ENTRY_JSON.dump_json(entry), 1)


def _unpack(packed: bytes) -> _Entry:
    return _ENTRY_JSON.validate_json(zlib.decompress(packed))


class MemoryCache:
    """An LRU bounded by entries, with a TTL per entry; entries stored packed.

    Packing waits for the event loop's next round: one API answer wakes ~20 messages
    at once, and their replies should not queue behind 20 packings (~80 us each). Until
    then the entry is kept as the objects (frozen, so they can be handed out as they are).
    """

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, bytes | _Entry]] = OrderedDict()
        self._unpacked: list[str] = []
        # The loop a packing is scheduled in; a loop closed before running it must not
        # keep every later entry from being packed.
        self._packing: asyncio.AbstractEventLoop | None = None

    async def get(self, key: str) -> _Entry | None:
        """The live entry under ``key``, refreshed as most recently used."""
        return self.get_now(key)

    async def put(self, key: str, entry: _Entry) -> None:
        """Store ``entry``, evicting the least recently used past ``max_entries``."""
        self.put_now(key, entry)

    async def aclose(self) -> None:
        """Nothing to release."""

    def get_now(self, key: str) -> _Entry | None:
        """``get`` without a coroutine (the cache never waits)."""
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return _unpack(value) if isinstance(value, bytes) else value

    def put_now(self, key: str, entry: _Entry) -> None:
        """``put`` without a coroutine."""
        self._data[key] = (time.monotonic() + self._ttl, entry)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
        self._unpacked.append(key)
        self._pack_later()

    def _pack_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing to wait for
            self.pack_now()
            return
        if self._packing is not loop:
            self._packing = loop
            loop.call_soon(self.pack_now)

    def pack_now(self) -> None:
        """Pack the entries stored since the last packing."""
        self._packing = None
        keys, self._unpacked = self._unpacked, []
        for key in keys:
            item = self._data.get(key)
            if item is not None and not isinstance(item[1], bytes):
                self._data[key] = (item[0], _pack(item[1]))  # keeps its place in the LRU

    def __len__(self) -> int:
        return len(self._data)


class TieredCache:
    """A process-local cache in front of a shared one: reads try ``local`` first and
    copy a ``shared`` hit into it; writes go to both. A retry that reaches the same
    instance is answered even while the shared backend is down."""

    def __init__(self, local: MemoryCache, shared: PredictionCache) -> None:
        self.local = local
        self.shared = shared

    async def get(self, key: str) -> _Entry | None:
        """Local first, then shared."""
        entry = self.local.get_now(key)
        if entry is None:
            entry = await self.shared.get(key)
            if entry is None:
                # Another task may have stored it locally while we waited on the network.
                return self.local.get_now(key)
            self.local.put_now(key, entry)
        return entry

    async def put(self, key: str, entry: _Entry) -> None:
        """Into both tiers."""
        self.local.put_now(key, entry)
        await self.shared.put(key, entry)

    async def aclose(self) -> None:
        """Close the shared backend."""
        await self.shared.aclose()


class DedupClassifier:
    """A ``Classifier`` that answers repeated documents from the cache."""

    def __init__(
        self,
        inner: Classifier,
        cache: PredictionCache,
        *,
        metrics: ClassifierMetrics | None = None,
    ) -> None:
        self._inner = inner
        self._cache = cache
        self._in_flight: dict[str, asyncio.Future[_Entry]] = {}
        self.hits = 0
        self.misses = 0
        self.metrics = metrics

    @property
    def description(self) -> str:
        return self._inner.description

    @property
    def cache(self) -> PredictionCache:
        """The cache this layer reads and fills."""
        return self._cache

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        keys = [dedup_key(d) for d in documents]
        # A key already being classified here needs no cache round trip.
        lookup = [k for k in dict.fromkeys(keys) if k not in self._in_flight]
        found = await self._lookup(lookup)
        # From here to the in-flight registration nothing awaits: a concurrent copy of a
        # document either sees our future or finds the cached entry, never neither.
        results: dict[int, _Entry] = {}
        waits: dict[int, asyncio.Future[_Entry]] = {}
        todo: list[int] = []
        for i, key in enumerate(keys):
            cached = found.get(key)
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
                fresh: list[tuple[str, _Entry]] = []
                for i, prediction in zip(unique, batch.predictions, strict=True):
                    entry = (prediction, batch.model)
                    mine[keys[i]].set_result(entry)  # waiters go on at once
                    fresh.append((keys[i], entry))
                for i in todo:
                    results[i] = mine[keys[i]].result()
                # Stored before the in-flight futures go (finally): a copy arriving in
                # between finds one or the other.
                await self._store(fresh)
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

    async def _lookup(self, keys: list[str]) -> dict[str, _Entry]:
        if not keys:
            return {}
        if len(keys) == 1:
            entries = [await self._cache.get(keys[0])]
        else:
            entries = await asyncio.gather(*(self._cache.get(k) for k in keys))
        return {k: e for k, e in zip(keys, entries, strict=True) if e is not None}

    async def _store(self, items: list[tuple[str, _Entry]]) -> None:
        if len(items) == 1:
            await self._cache.put(*items[0])
        elif items:
            await asyncio.gather(*(self._cache.put(k, e) for k, e in items))

    async def aclose(self) -> None:
        """Close the inner classifier, then the cache."""
        try:
            await self._inner.aclose()
        finally:
            await self._cache.aclose()
