"""Micro-batching and dedup over real HTTP against the emulator: requests and billing
are read from the emulator's own ledger."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from gateway.classify import (
    BatchingClassifier,
    CommunicationsMiningClient,
    DedupClassifier,
    MemoryCache,
)
from gateway.classify import _batcher as batcher_module
from gateway.classify._client import TenantEndpoint
from gateway.classify._retry import RetryPolicy
from gateway.documents import RawEmailDocument
from gateway.errors import InvalidRequestError
from gateway.testing import EmulatorHandle

pytestmark = pytest.mark.emulator(per_test=True, latency_ms=50)

TOPICS = {"invoice": "Finance > Invoice", "refund": "Finance > Refund"}


def doc(i: int, word: str = "invoice", *, message_id: str | None = None) -> RawEmailDocument:
    document: RawEmailDocument = {
        "raw_email": {
            "headers": {"raw": f"Subject: about {word} {i}\r\nFrom: a{i}@example.org"},
            "body": {"plain": f"Hello, this is about the {word} number {i}."},
        },
        "comment_id": message_id or f"msg-{i}",
    }
    return document


def client(emu: EmulatorHandle, **kwargs: Any) -> CommunicationsMiningClient:
    endpoint = TenantEndpoint(emu.base_url, emu.project, emu.dataset, emu.token or "x")
    return CommunicationsMiningClient(
        endpoint, retry=RetryPolicy(attempts=1), timeout=10.0, **kwargs
    )


async def test_concurrent_messages_share_requests_and_each_gets_its_own_result(
    emulator: EmulatorHandle,
) -> None:
    """200 concurrent single-document calls travel in a handful of requests, billed once
    each, and every caller receives the prediction of its own document."""
    batcher = BatchingClassifier(client(emulator), max_batch=64, max_wait_ms=20, max_in_flight=4)
    words = ["invoice" if i % 2 else "refund" for i in range(200)]
    results = await asyncio.gather(
        *(batcher.predict_raw_emails([doc(i, w)]) for i, w in enumerate(words))
    )
    await batcher.aclose()
    for word, batch in zip(words, results, strict=True):
        top = batch.predictions[0].top_label
        assert top is not None and top.full_name == TOPICS[word]
    stats = emulator.stats()
    assert stats["documents_billed"] == 200
    assert stats["requests"] <= 8
    assert max(batcher.batch_sizes) <= 64


async def test_a_failed_batch_fails_only_its_own_messages(emulator: EmulatorHandle) -> None:
    """One invalid document makes the API refuse its whole batch; the next batch, and its
    callers, are untouched."""
    batcher = BatchingClassifier(client(emulator), max_batch=4, max_wait_ms=50, max_in_flight=2)
    bad = doc(0)
    bad["raw_email"]["body"] = {}  # neither plain nor html: the API answers 422
    first = [bad, doc(1), doc(2), doc(3)]
    second = [doc(i) for i in range(4, 8)]
    outcomes = await asyncio.gather(
        *(batcher.predict_raw_emails([d]) for d in first + second), return_exceptions=True
    )
    await batcher.aclose()
    assert all(isinstance(o, InvalidRequestError) for o in outcomes[:4])
    assert not any(isinstance(o, BaseException) for o in outcomes[4:])
    assert emulator.stats()["documents_billed"] == 4


async def test_a_slow_request_does_not_hold_back_the_next_batch(
    emulator: EmulatorHandle,
) -> None:
    """With two requests allowed in flight, a second full batch starts while the first is
    still waiting for the (slow) API, so the two requests overlap."""
    emulator.set_faults(latency_ms=600)
    batcher = BatchingClassifier(client(emulator), max_batch=8, max_wait_ms=5, max_in_flight=2)
    await asyncio.gather(*(batcher.predict_raw_emails([doc(i)]) for i in range(16)))
    await batcher.aclose()
    assert batcher.requests == 2
    assert batcher.peak_in_flight == 2


async def test_a_retried_message_is_billed_once(emulator: EmulatorHandle) -> None:
    """The same document classified again (an MTA retry) is answered from the cache."""
    dedup = DedupClassifier(client(emulator), MemoryCache(ttl=60, max_entries=100))
    first = await dedup.predict_raw_emails([doc(1)])
    again = await dedup.predict_raw_emails([doc(1)])
    await dedup.aclose()
    assert first == again
    assert emulator.stats()["documents_billed"] == 1
    assert (dedup.hits, dedup.misses) == (1, 1)


async def test_concurrent_copies_of_one_message_share_one_request(
    emulator: EmulatorHandle,
) -> None:
    """A retry that arrives while the first attempt is still being classified waits for it
    instead of paying for a second classification."""
    dedup = DedupClassifier(client(emulator), MemoryCache(ttl=60, max_entries=100))
    results = await asyncio.gather(*(dedup.predict_raw_emails([doc(7)]) for _ in range(5)))
    await dedup.aclose()
    assert all(r == results[0] for r in results)
    assert emulator.stats()["documents_billed"] == 1


async def test_a_different_message_reusing_a_message_id_is_classified_again(
    emulator: EmulatorHandle,
) -> None:
    """The key is Message-ID plus the document hash: a reused Message-ID with other
    content is a different message and gets its own prediction."""
    dedup = DedupClassifier(client(emulator), MemoryCache(ttl=60, max_entries=100))
    a = await dedup.predict_raw_emails([doc(1, "invoice", message_id="same@id")])
    b = await dedup.predict_raw_emails([doc(2, "refund", message_id="same@id")])
    await dedup.aclose()
    assert a != b
    assert emulator.stats()["documents_billed"] == 2


def test_the_cache_forgets_after_its_ttl_and_past_its_size() -> None:
    """Entries expire after ``ttl`` and the least recently used go past ``max_entries``."""
    from gateway.predictions import DocumentPrediction

    entry = (DocumentPrediction(), None)
    cache = MemoryCache(ttl=0.05, max_entries=2)
    cache.put_now("a", entry)
    cache.put_now("b", entry)
    assert cache.get_now("a") == entry  # a is now the most recently used
    cache.put_now("c", entry)
    assert cache.get_now("b") is None and cache.get_now("a") == entry and len(cache) == 2
    time.sleep(0.06)
    assert cache.get_now("a") is None


async def test_the_byte_budget_closes_a_batch_before_it_outgrows_max_bytes(
    emulator: EmulatorHandle,
) -> None:
    """``max_bytes`` (JSON octets) just over one document: six concurrent documents go
    as six requests, none of them over the budget; a document over it still goes, alone."""
    one = len(json.dumps(doc(0), ensure_ascii=False).encode())
    batcher = BatchingClassifier(client(emulator), max_batch=64, max_wait_ms=50, max_bytes=one + 10)
    await asyncio.gather(*(batcher.predict_raw_emails([doc(i)]) for i in range(6)))
    big = doc(99, "invoice " * 100)
    result = await batcher.predict_raw_emails([big])
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1] * 7
    assert len(result.predictions) == 1


async def test_the_batcher_keeps_the_sizes_of_its_latest_requests_only(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway runs for months: the record of batch sizes is bounded (the newest kept)."""
    monkeypatch.setattr(batcher_module, "RECENT_BATCHES", 3)
    batcher = BatchingClassifier(client(emulator), max_batch=64, max_wait_ms=0)
    for i in range(5):
        await batcher.predict_raw_emails([doc(i)] * (i + 1))
    await batcher.aclose()
    assert batcher.requests == 5
    assert list(batcher.batch_sizes) == [3, 4, 5]
