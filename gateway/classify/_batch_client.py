"""A worker's classifier when the batcher process classifies for every worker.

``RemoteClassifier`` sends each call's documents to ``ops._batcher_process`` over its Unix socket
and awaits the answer; many calls share the one connection, told apart by id. What the
batcher process counted for this call (requests, cache hits, circuit changes) comes back
with the answer and goes into this worker's metrics (``_metrics.replay``).

Failures stay on the classifier's path: a lost connection or an answer later than the
deadline is a ``TransportError`` / ``ClassifierTimeout``, so the message follows
``on_error`` like any other classifier failure; nothing here answers 451 by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Iterable, Sequence

from gateway.documents import RawEmailDocument
from gateway.errors import ClassifierTimeout, TransportError
from gateway.logsetup import get_logger
from gateway.predictions import PredictionBatch

from ._batch_wire import (
    FrameError,
    WireReply,
    encode_request,
    encode_thread_request,
    frame,
    read_frame,
)
from ._metrics import ClassifierMetrics, replay

__all__ = ["RemoteClassifier", "RemoteThreads"]

_log = get_logger("cm-gateway.batch-client")


class RemoteClassifier:
    """A ``Classifier`` served by the batcher process at ``path``."""

    def __init__(
        self,
        path: str,
        *,
        deadline: float,
        metrics: ClassifierMetrics | None = None,
    ) -> None:
        self.path = path
        self.deadline = deadline
        self.metrics = metrics
        self._closing = False
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[WireReply]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        # The process's context (worker id), not that of the message whose call happens
        # to open the connection: the reader's log lines belong to no message.
        self._context = contextvars.copy_context()

    @property
    def description(self) -> str:
        return f"the shared batcher process ({self.path})"

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        reply = await self._exchange(lambda request_id: encode_request(request_id, list(documents)))
        if self.metrics is not None:
            replay(reply.events, reply.circuits, self.metrics, reply.gauges)
        if reply.error is not None:
            raise reply.error.exception()
        if reply.batch is None:
            raise TransportError("the batcher process answered neither predictions nor error")
        return reply.batch

    async def ask_threads(
        self, thread_ids: Sequence[str], rules: Iterable[str] | None = None
    ) -> WireReply:
        """One question to the batcher process's conversation memory (see
        ``RemoteThreads``); raises like ``predict_raw_emails`` when it does not answer."""
        return await self._exchange(
            lambda request_id: encode_thread_request(request_id, thread_ids, rules)
        )

    async def _exchange(self, encode: Callable[[int], bytes]) -> WireReply:
        """Send the frame ``encode(request_id)`` builds; the batcher process's reply."""
        writer = await self._connection()
        self._next_id += 1
        request_id = self._next_id
        answer: asyncio.Future[WireReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            writer.write(encode(request_id))
            async with asyncio.timeout(self.deadline):
                return await answer
        except TimeoutError:
            self._cancel(writer, request_id)
            raise ClassifierTimeout(
                f"the batcher process did not answer within {self.deadline:g} s"
            ) from None
        except asyncio.CancelledError:
            self._cancel(writer, request_id)
            raise
        finally:
            self._waiting.pop(request_id, None)

    @staticmethod
    def _cancel(writer: asyncio.StreamWriter, request_id: int) -> None:
        """Nobody waits for ``request_id`` any more: a batch not yet sent goes without it."""
        if not writer.is_closing():
            writer.write(frame(b'{"cancel":%d}' % request_id))

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                try:
                    reader, self._writer = await asyncio.open_unix_connection(self.path)
                except OSError as exc:
                    raise TransportError(f"cannot reach the batcher process: {exc}") from None
                self._reader_task = asyncio.create_task(
                    self._read_replies(reader), context=self._context.copy()
                )
            return self._writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        reason = "the batcher process closed the connection"
        try:
            while (payload := await read_frame(reader)) is not None:
                reply = WireReply.model_validate_json(payload)
                answer = self._waiting.get(reply.id)
                if answer is not None and not answer.done():
                    answer.set_result(reply)
        except (FrameError, ValueError, ConnectionError) as exc:
            reason = f"the batcher process connection broke: {exc}"
        if not self._closing:
            _log.error("batcher_connection_lost", reason=reason)
        if self._writer is not None:
            self._writer.close()
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(TransportError(reason))

    async def aclose(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


class RemoteThreads:
    """The conversation memory (``thread`` conditions) kept by the batcher process, so
    that every worker recalls what any worker remembered (with a ``memory://`` or
    ``sqlite://`` cache; Redis is shared already). Like every conversation memory, never
    a dependency of the mail path: a batcher that does not answer means "nothing
    remembered", with one warning line."""

    def __init__(self, client: RemoteClassifier) -> None:
        self._client = client

    async def recall(self, thread_ids: Sequence[str]) -> frozenset[str]:
        """See ``ThreadMemory.recall``."""
        try:
            reply = await self._client.ask_threads(thread_ids)
        except Exception as exc:  # the memory never fails a message
            _log.warning("thread_memory_unavailable", error=str(exc) or type(exc).__name__)
            return frozenset()
        return frozenset(reply.rules)

    async def remember(self, thread_ids: Sequence[str], rules: Iterable[str]) -> None:
        """See ``ThreadMemory.remember``."""
        try:
            await self._client.ask_threads(thread_ids, rules)
        except Exception as exc:  # the memory never fails a message
            _log.warning("thread_memory_unavailable", error=str(exc) or type(exc).__name__)

    async def aclose(self) -> None:
        """Nothing: the connection is the classifier's."""
