"""Micro-batching: the documents of concurrent messages go into one predict call.

Communications Mining bills per document and answers large batches faster per document,
so one request per mail wastes time. ``BatchingClassifier`` wraps any ``Classifier`` and
is one itself: each caller awaits only its own documents' results, while the documents
of everyone who called within ``max_wait_ms`` (up to ``max_batch`` documents or
``max_bytes`` of JSON) travel in one request. At most ``max_in_flight`` requests run at
once; while they do, new documents gather into the next batch, so batches grow with the
load instead of requests queueing up: when ``max_wait_ms`` passes and every slot is busy,
the batch stays open until a slot frees (it could not start earlier anyway, and whatever
joins it meanwhile costs no extra request). ``max_batch`` and ``max_bytes`` still close a
batch at once. A failed request fails only its own documents.

With ``send_when_idle`` (group commit, as in Nagle's algorithm), ``max_wait_ms`` is only
a ceiling: when no request is running, documents go at once, and what gathers while one
runs goes as soon as the last running request ends. Light load then adds no wait at all,
and under load the batch is whatever arrived during one request: batches still grow with
the load, and the wait is one request's time rather than a fixed ``max_wait_ms``. ``min_batch``
trades latency for fewer requests: a batch smaller than it does not go when the API is
idle, but waits for more documents, ``max_wait_ms`` at most (then it goes anyway).

``target_batch`` lets requests overlap: a batch that reaches it goes at once, even while
another request runs, as long as a slot is free (when every slot is busy it keeps growing,
up to ``max_batch``). Group commit alone keeps one request in flight, so a document that
arrives just after a request left waits for that whole request and then its own; with a
target, it waits only for the target's worth of documents to arrive. Each request still
carries at least ``target_batch`` documents unless it was sent by an idle API or
``max_wait_ms``.

With ``adaptive`` (``target_batch = "auto"``, the default) none of that needs a setting:
``AdaptivePolicy`` (``_adaptive``) sends a batch at once when nothing is out, else when
it holds half the documents seen at once lately (two requests take turns), and learns
the API's latency to bound the wait (half of it, ``max_wait_ms`` at most).
``min_batch``, ``max_batch``, ``max_bytes`` and ``max_in_flight`` still apply.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pydantic_core

from gateway.context import Classifier
from gateway.documents import MAX_DOCUMENTS, RawEmailDocument
from gateway.errors import MalformedResponseError
from gateway.predictions import DocumentPrediction, ModelInfo, PredictionBatch

from ._adaptive import AdaptivePolicy

if TYPE_CHECKING:
    from ._metrics import ClassifierMetrics

__all__ = ["RECENT_BATCHES", "BatchingClassifier"]

RECENT_BATCHES = 10_000

_Result = tuple[DocumentPrediction, ModelInfo | None]


@dataclass(slots=True)
class _Pending:
    documents: list[RawEmailDocument] = field(default_factory=list)
    futures: list[asyncio.Future[_Result]] = field(default_factory=list)
    size: int = 0


# Loop turns the next request gets before the callers of the last one resume: httpx
# needs about 4 to write a request on a pooled connection. Woken first, the callers'
# rules and relays (a few ms of CPU each, a whole batch of them) kept the API idle for
# tens of ms per batch.
HEAD_START_TURNS = 8


async def _head_start() -> None:
    for _ in range(HEAD_START_TURNS):
        await asyncio.sleep(0)


def _fail(batch: _Pending, indexes: list[int], exc: Exception) -> None:
    for i in indexes:
        if not batch.futures[i].done():
            batch.futures[i].set_exception(exc)


def _succeed(batch: _Pending, indexes: list[int], result: PredictionBatch) -> None:
    for i, prediction in zip(indexes, result.predictions, strict=True):
        if not batch.futures[i].done():
            batch.futures[i].set_result((prediction, result.model))


class BatchingClassifier:
    """A ``Classifier`` that coalesces concurrent calls into batches."""

    def __init__(
        self,
        inner: Classifier,
        *,
        max_batch: int = 64,
        max_wait_ms: float = 20.0,
        max_in_flight: int = 4,
        max_bytes: int = 16 * 1024 * 1024,
        send_when_idle: bool = False,
        min_batch: int = 1,
        target_batch: int = 0,
        adaptive: bool = False,
        clock: Callable[[], float] = time.monotonic,
        metrics: ClassifierMetrics | None = None,
    ) -> None:
        if not 1 <= max_batch <= MAX_DOCUMENTS:
            raise ValueError(f"max_batch must be 1..{MAX_DOCUMENTS}")
        if not 1 <= min_batch <= max_batch:
            raise ValueError("min_batch must be 1..max_batch")
        if target_batch and not min_batch <= target_batch <= max_batch:
            raise ValueError("target_batch must be 0 (off) or min_batch..max_batch")
        self._inner = inner
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._max_bytes = max_bytes
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending = _Pending()
        self._timer: asyncio.TimerHandle | None = None
        self._max_in_flight = max_in_flight
        self._send_when_idle = send_when_idle
        self._min_batch = min_batch
        self._target_batch = target_batch
        self.policy = (
            AdaptivePolicy(max_wait=self._max_wait, min_batch=min_batch) if adaptive else None
        )
        self._clock = clock
        self._last_arrival = 0.0
        # Adaptive: documents due back, one per document of each request that ended (in
        # a closed loop, its sender's next message), as [end time, count], oldest first;
        # each new document takes one off, and what is not back within two latencies never is.
        self._due_back: collections.deque[list[float]] = collections.deque()
        self._quiet_timer: asyncio.TimerHandle | None = None
        # Documents of batches sent and not yet ended (running or waiting for a slot).
        self._out = 0
        # Batches holding or waiting for a slot; at max_in_flight, a due batch stays open.
        self._queued = 0
        self._overdue = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        # The sizes of the latest requests (tests and benchmarks read them); bounded, as a
        # gateway runs for months and sends a request every few messages.
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=RECENT_BATCHES)
        self.metrics = metrics

    @property
    def description(self) -> str:
        return f"{self._inner.description} (batched <= {self._max_batch})"

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        futures = [self._submit(doc) for doc in documents]
        if self._idle_and_due() or self._target_due() or self._adaptive_due():
            # After the whole call's documents joined: one caller's batch stays whole.
            self._flush()
        try:
            results = await asyncio.gather(*futures)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        model = next((m for _, m in results if m is not None), None)
        return PredictionBatch(predictions=tuple(p for p, _ in results), model=model)

    def _idle_and_due(self) -> bool:
        """Group commit: no request runs, and the batch has ``min_batch`` documents (a
        smaller one waits for more, ``max_wait_ms`` at most). With the adaptive policy,
        the policy says what an idle API sends (``AdaptivePolicy.ready``)."""
        return (
            self.policy is None
            and self._send_when_idle
            and self._queued == 0
            and len(self._pending.documents) >= self._min_batch
        )

    def _target_due(self) -> bool:
        """The batch has ``target_batch`` documents and a slot is free for it."""
        return (
            0 < self._target_batch <= len(self._pending.documents)
            and self._queued < self._max_in_flight
        )

    def _adaptive_due(self) -> bool:
        """The adaptive policy says go, and a slot is free."""
        if self.policy is None:
            return False
        expected = self._expected()
        self.policy.note(self._clock(), self._out + len(self._pending.documents) + expected)
        return (
            self._queued < self._max_in_flight
            and bool(self._pending.documents)
            and self.policy.ready(len(self._pending.documents), self._out, expected)
        )

    def _expected(self) -> int:
        """Adaptive: the documents due back (see ``_due_back``)."""
        assert self.policy is not None
        horizon = self._clock() - 2 * self.policy.learned()
        while self._due_back and self._due_back[0][0] < horizon:
            self._due_back.popleft()
        return int(sum(count for _, count in self._due_back))

    def _wait(self) -> float:
        return self._max_wait if self.policy is None else self.policy.wait()

    def _submit(self, document: RawEmailDocument) -> asyncio.Future[_Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()
        # The byte budget keeps one request under proxy body limits even when many
        # large html bodies arrive together; a single document over it still goes alone.
        size = len(pydantic_core.to_json(document))
        if self._pending.documents and self._pending.size + size > self._max_bytes:
            self._flush()
        self._pending.documents.append(document)
        self._pending.futures.append(future)
        self._pending.size += size
        if len(self._pending.documents) >= self._max_batch:
            self._flush()
        elif self._timer is None and not self._overdue:
            self._timer = loop.call_later(self._wait(), self._due)
        if self.policy is not None:
            if self._due_back:
                self._due_back[0][1] -= 1
                if self._due_back[0][1] <= 0:
                    self._due_back.popleft()
            self._last_arrival = self._clock()
            if self._quiet_timer is None:
                self._quiet_timer = loop.call_later(self.policy.quiet(), self._quiet_check)
        return future

    def _quiet_check(self) -> None:
        """Adaptive: no document came for ``policy.quiet()``: the open batch goes."""
        self._quiet_timer = None
        if self.policy is None or not self._pending.documents:
            return
        left = self._last_arrival + self.policy.quiet() - self._clock()
        if left > 0.0005:
            loop = asyncio.get_running_loop()
            self._quiet_timer = loop.call_later(left, self._quiet_check)
        elif self._queued < self._max_in_flight and self.policy.quiet_ready(
            len(self._pending.documents)
        ):
            self._flush()

    def _due(self) -> None:
        self._timer = None
        if self._queued >= self._max_in_flight:
            self._overdue = True  # flushed by the next request that ends
            return
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._overdue = False
        batch, self._pending = self._pending, _Pending()
        if not batch.documents:
            return
        self._queued += 1
        self._out += len(batch.documents)
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Pending) -> None:
        settle = None
        launched = False
        try:
            settle = await self._call_in_slot(batch)
        finally:
            self._queued -= 1
            self._out -= len(batch.documents)
            if self.policy is not None:
                self._due_back.append([self._clock(), len(batch.documents)])
            if self._overdue or self._idle_and_due() or self._target_due() or self._adaptive_due():
                self._flush()
                launched = True
            if settle is not None:
                try:
                    if launched:
                        await _head_start()
                finally:
                    settle()

    async def _call_in_slot(self, batch: _Pending) -> Callable[[], None] | None:
        """Send the batch's live documents; returns what hands the results out."""
        async with self._slots:
            live = [i for i, f in enumerate(batch.futures) if not f.done()]
            if not live:
                return None  # every caller gave up while we waited for a slot: bill nothing
            documents = [batch.documents[i] for i in live]
            self.requests += 1
            self.batch_sizes.append(len(documents))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            if self.metrics is not None:
                self.metrics.api_request(len(documents))
            started = self._clock()
            try:
                result = await self._inner.predict_raw_emails(documents)
            except Exception as exc:
                return self._failed(batch, live, exc)
            finally:
                self.in_flight -= 1
            if self.policy is not None:
                self.policy.observe(self._clock() - started)
                if self.metrics is not None:
                    self.metrics.batcher_learned(self.policy.learned(), self.policy.target())
        if len(result.predictions) != len(live):
            count = f"{len(result.predictions)} predictions for {len(live)} documents"
            return self._failed(batch, live, MalformedResponseError(count))
        if self.metrics is not None:
            self.metrics.api_result(len(documents), None)
        return functools.partial(_succeed, batch, live, result)

    def _failed(self, batch: _Pending, live: list[int], exc: Exception) -> Callable[[], None]:
        if self.metrics is not None:
            self.metrics.api_result(len(live), exc)
        return functools.partial(_fail, batch, live, exc)

    async def aclose(self) -> None:
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        if self._pending.documents:
            self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._inner.aclose()
