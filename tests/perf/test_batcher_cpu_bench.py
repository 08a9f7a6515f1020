"""CPU of the shared batcher process per 20-document batch of ~4 KB mails, step by step
(run with ``-m perf -s``). Each bench prints the old way and the new way side by side,
medians of several runs, so that a figure in a commit message can be measured again."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import statistics
import time
import timeit
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import httpx
import pytest

from gateway._canonical_json import canonical_json_slow
from gateway.classify import DedupClassifier, MemoryCache, encode_reply, parse_prediction_batch
from gateway.classify._batch_wire import WireReply, frame
from gateway.classify._dedup import PredictionCache
from gateway.classify._request_json import json_body
from gateway.documents import RawEmailDocument, document_hash
from gateway.emulator import KeywordModel
from gateway.emulator._inputs import raw_email_docs
from gateway.emulator._model import Selection
from gateway.mail import build_document, parse_message
from gateway.predictions import DocumentPrediction, PredictionBatch

from .loadgen import make_message

pytestmark = pytest.mark.perf

BATCH = 20


@cache
def documents() -> list[RawEmailDocument]:
    """The throughput benchmark's mails (4 KB), as the batcher receives them."""
    raws = [make_message("bench", i, 4096) for i in range(BATCH)]
    return [build_document(parse_message(raw), raw) for raw in raws]


@cache
def api_answer() -> bytes:
    """The emulator's predict-raw-emails body for ``documents()``."""
    model = KeywordModel.default()
    request = {"documents": documents()}
    answer = model.predict_texts(
        raw_email_docs(request),
        version=max(model.taxonomy.versions),
        selection=Selection.from_request(request),
    )
    return json.dumps(answer).encode()


def median_us(fn: Callable[[], object], *, number: int = 20, repeat: int = 15) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def compare(what: str, old: Callable[[], object], new: Callable[[], object]) -> None:
    before, after = median_us(old), median_us(new)
    print(f"\n{what}: {before:.0f} -> {after:.0f} us per {BATCH}-document batch")


def test_request_body_encoding() -> None:
    """httpx's json= (json.dumps) against json_body + content=."""
    body: dict[str, Any] = {"documents": documents(), "threshold": "auto"}
    url = "https://t.example/predict-raw-emails"
    headers = {"Content-Type": "application/json"}
    compare(
        "request body",
        lambda: httpx.Request("POST", url, json=body),
        lambda: httpx.Request("POST", url, content=json_body(body), headers=headers),
    )


def test_document_hash() -> None:
    """The json module's canonical text against canonical_json, both hashed."""
    docs = documents()
    compare(
        "document_hash",
        lambda: [hashlib.sha256(canonical_json_slow(doc)).hexdigest() for doc in docs],
        lambda: [document_hash(doc) for doc in docs],
    )


class _EagerCache(MemoryCache):
    """Packs in put_now, as MemoryCache did before it waited for the loop's next round."""

    def _pack_later(self) -> None:
        self.pack_now()


class _Answers:
    description = "the API answer, parsed once"

    def __init__(self) -> None:
        self.batch = parse_prediction_batch(json.loads(api_answer()), BATCH)

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        predictions = self.batch.predictions[: len(documents)]
        return PredictionBatch(predictions=predictions, model=self.batch.model)

    async def aclose(self) -> None:
        pass


def test_dedup_layer_on_a_batch_of_misses() -> None:
    """DedupClassifier on 20 new documents, one call each as the batcher process makes
    them (a worker's request is one message): hash, lookup, store with _pack. The CPU
    of packing at once and in the loop's next round (the same work, later)."""
    docs = documents()
    serial = itertools.count()

    def timed(cache: PredictionCache) -> Callable[[], object]:
        dedup = DedupClassifier(_Answers(), cache)
        loop = asyncio.new_event_loop()

        async def calls() -> None:
            n = next(serial)  # new comment ids: every document a miss
            await asyncio.gather(
                *(
                    dedup.predict_raw_emails([{**doc, "comment_id": f"{n}.{i}"}])
                    for i, doc in enumerate(docs)
                )
            )

        def one_batch() -> None:
            loop.run_until_complete(calls())

        return one_batch

    compare(
        "dedup, 20 misses",
        timed(_EagerCache(ttl=600, max_entries=100_000)),
        timed(MemoryCache(ttl=600, max_entries=100_000)),
    )


def test_reply_encoding() -> None:
    """The batcher's answer to 20 one-message requests: the WireReply model, dumped,
    against encode_reply."""
    predictions = _Answers().batch.predictions
    batches = [PredictionBatch(predictions=(p,), model=None) for p in predictions]
    events: list[list[Any]] = [["api", None], ["cache_misses", 1]]
    circuits: dict[str, list[Any]] = {"cm": ["closed", 0]}

    def model_dump() -> None:
        for n, batch in enumerate(batches):
            batch = PredictionBatch(predictions=batch.predictions, model=batch.model)
            reply = WireReply(id=n, batch=batch, events=events, circuits=circuits)
            frame(reply.model_dump_json(exclude_defaults=True).encode())

    compare(
        "encode_reply",
        model_dump,
        lambda: [
            encode_reply(n, batch=b, events=events, circuits=circuits)
            for n, b in enumerate(batches)
        ],
    )


class _Gate:
    """One API answer for every waiting call at once, as the batcher's dispatch gives."""

    description = "gate"

    def __init__(self, predictions: dict[str, DocumentPrediction]) -> None:
        self.predictions = predictions
        self.open = asyncio.Event()

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        await self.open.wait()
        found = tuple(self.predictions[d.get("comment_id", "")] for d in documents)
        return PredictionBatch(predictions=found)

    async def aclose(self) -> None:
        pass


def test_time_from_an_api_answer_to_the_last_of_its_20_replies() -> None:
    """20 one-message calls wait on one answer; each then stores its entry and encodes
    its reply. The last reply's delay, with packing at once and in the next round."""
    docs = documents()
    predictions = _Answers().batch.predictions
    serial = itertools.count()

    async def burst(cache: MemoryCache) -> float:
        n = next(serial)
        batch = [{**doc, "comment_id": f"{n}.{i}"} for i, doc in enumerate(docs)]
        gate = _Gate({str(d["comment_id"]): p for d, p in zip(batch, predictions, strict=True)})
        dedup = DedupClassifier(gate, cache)
        done: list[float] = []

        async def answer(i: int, doc: Any) -> None:
            found = await dedup.predict_raw_emails([doc])
            encode_reply(i, batch=found, events=[], circuits={})
            done.append(time.perf_counter())

        tasks = [asyncio.create_task(answer(i, doc)) for i, doc in enumerate(batch)]
        await asyncio.sleep(0.001)  # every call waits at the gate
        started = time.perf_counter()
        gate.open.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0)  # the packing, out of the figure but not left behind
        return (max(done) - started) * 1e6

    def median_burst(cache: MemoryCache) -> float:
        loop = asyncio.new_event_loop()
        try:
            return statistics.median(loop.run_until_complete(burst(cache)) for _ in range(40))
        finally:
            loop.close()

    before = median_burst(_EagerCache(ttl=600, max_entries=100_000))
    after = median_burst(MemoryCache(ttl=600, max_entries=100_000))
    print(f"\nanswer to last reply: {before:.0f} -> {after:.0f} us for {BATCH} messages")
