"""The in-process dedup cache keeps predictions packed: what comes out is what went in,
and an entry costs a few kilobytes at most instead of the ~90 KB of a prediction's objects."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ClassifierConfig
from gateway.dedup import CacheEntry, MemoryCache
from gateway.documents import RawEmailDocument
from gateway.emulator.provider import EmulatorClassifier

WORDS = [
    "invoice", "refund", "ORD-123456", "INV-0042", "urgent", "angry", "thank you",
    "out of office", "passport", "€1,200.00", "IBAN DE89370400440532013000", "hello",
    "4111 1111 1111 1111", "complaint", "password reset", "ops@example.com",
]  # fmt: skip


def document(text: str, subject: str = "Question") -> RawEmailDocument:
    doc: RawEmailDocument = {
        "raw_email": {
            "headers": {"raw": f"Subject: {subject}\r\nFrom: a@example.org"},
            "body": {"plain": text},
        },
        "comment_id": "c1",
    }
    return doc


def predict(docs: list[RawEmailDocument]) -> list[CacheEntry]:
    classifier = EmulatorClassifier(ClassifierConfig(provider="emulator"))
    batch = asyncio.run(classifier.predict_raw_emails(docs))
    return [(p, batch.model) for p in batch.predictions]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=0, max_size=40))
def test_a_cached_prediction_comes_back_equal_to_what_was_stored(words: list[str]) -> None:
    (entry,) = predict([document(" ".join(words))])
    cache = MemoryCache(ttl=60, max_entries=10)
    cache.put_now("k", entry)
    assert cache.get_now("k") == entry


def test_an_entry_with_many_entities_costs_about_a_kilobyte() -> None:
    body = " ".join(f"order ORD-{i:06d} invoice INV-{i:05d} refund €{i},00" for i in range(20))
    (entry,) = predict([document(body)])
    assert len(entry[0].entities) >= 40
    cache = MemoryCache(ttl=60, max_entries=1000)
    keys = [f"message-{i}:{'0' * 64}" for i in range(500)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            cache.put_now(key, entry)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    finally:
        tracemalloc.stop()
    assert per_entry < 8192, f"{per_entry:.0f} bytes per cached prediction"
