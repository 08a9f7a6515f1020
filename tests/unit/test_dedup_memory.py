"""The in-process dedup cache keeps predictions packed: what comes out is what went in,
and an entry costs a few kilobytes at most instead of the ~90 KB of a prediction's objects."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.classify import MemoryCache
from gateway.classify._dedup import CacheEntry
from gateway.config import ClassifierConfig
from gateway.documents import RawEmailDocument
from gateway.emulator import EmulatorClassifier

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


# --- packing in the loop's next round ----------------------------------------------


def entries(n: int) -> list[CacheEntry]:
    return predict([document(f"{WORDS[i % len(WORDS)]} {i}") for i in range(n)])


ENTRIES = entries(4)


def is_packed(cache: MemoryCache, key: str) -> bool:
    return isinstance(cache._data[key][1], bytes)


def test_without_an_event_loop_an_entry_is_packed_at_once() -> None:
    cache = MemoryCache(ttl=60, max_entries=10)
    cache.put_now("k", ENTRIES[0])
    assert is_packed(cache, "k") and cache.get_now("k") == ENTRIES[0]


async def test_in_the_loop_replies_already_due_go_before_the_packing() -> None:
    """What was woken before the store (the other replies of one API answer) runs before
    the entry is packed; one round later it is packed and reads back equal."""
    cache = MemoryCache(ttl=60, max_entries=10)
    seen: list[bool] = []
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: seen.append(is_packed(cache, "a")))
    cache.put_now("a", ENTRIES[0])
    cache.put_now("b", ENTRIES[1])
    assert cache.get_now("a") is ENTRIES[0]  # frozen objects, handed out as they are
    await asyncio.sleep(0)
    assert seen == [False]
    assert is_packed(cache, "a") and is_packed(cache, "b")
    assert cache.get_now("a") == ENTRIES[0] and cache.get_now("b") == ENTRIES[1]
    cache.put_now("c", ENTRIES[2])  # a new round of packing is scheduled
    await asyncio.sleep(0)
    assert is_packed(cache, "c")


def test_a_loop_closed_before_its_packing_does_not_stop_later_ones() -> None:
    cache = MemoryCache(ttl=60, max_entries=10)

    first = asyncio.new_event_loop()

    def put_and_stop() -> None:
        cache.put_now("a", ENTRIES[0])
        first.stop()  # the round in which the packing would run never comes

    first.call_soon(put_and_stop)
    first.run_forever()
    first.close()
    assert not is_packed(cache, "a")

    async def put_and_wait() -> None:
        cache.put_now("b", ENTRIES[1])
        await asyncio.sleep(0)

    asyncio.run(put_and_wait())
    assert is_packed(cache, "a") and is_packed(cache, "b")


OPS = st.lists(
    st.tuples(st.sampled_from(["put", "get", "round"]), st.integers(0, 5), st.integers(0, 3)),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_packing_later_answers_as_a_plain_lru_would(ops: list[tuple[str, int, int]]) -> None:
    async def run() -> None:
        cache = MemoryCache(ttl=60, max_entries=3)
        model: dict[str, CacheEntry] = {}  # insertion order = LRU order
        for op, k, e in ops:
            key = f"k{k}"
            if op == "put":
                model.pop(key, None)
                model[key] = ENTRIES[e]
                while len(model) > 3:
                    del model[next(iter(model))]
                cache.put_now(key, ENTRIES[e])
            elif op == "get":
                expected = model.pop(key, None)
                if expected is not None:
                    model[key] = expected
                assert cache.get_now(key) == expected
            else:
                await asyncio.sleep(0)
            assert list(cache._data) == list(model)
        await asyncio.sleep(0)
        assert all(is_packed(cache, key) for key in model)

    asyncio.run(run())
