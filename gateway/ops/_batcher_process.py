"""The shared batcher: one process that classifies for every ``[smtp] workers`` process.

Each worker batches only its own sessions, so N workers sent N times the requests one
process would, each 1/N as large. With ``[classifier] shared_batcher`` (the default) the
parent of the workers starts this process first. It runs the whole classifier stack once
(``gateway.classify.build_live_classifier``: dedup, batcher, circuit breaker, provider)
and serves it on a Unix socket in a private directory; each worker's classifier is a
``gateway.classify.RemoteClassifier``. So a batch holds the documents of every worker's
sessions, a retried message that reaches another worker is still billed once (one dedup
cache), and the circuit opens for all workers at once.

It stops on SIGTERM (the parent sends it after the last worker has exited, so that
sessions draining in the workers still get answers), ignores SIGINT and SIGHUP (a
terminal's Ctrl-C reaches the whole process group; rules are the workers' business), and
exits when the parent disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from gateway.classify import (
    FrameError,
    MetricEvents,
    ThreadMemory,
    build_live_classifier,
    build_thread_memory,
    decode_request,
    encode_reply,
    read_frame,
    threads_in_process,
)
from gateway.config import Config
from gateway.context import Classifier
from gateway.documents import RawEmailDocument
from gateway.errors import ClassifierError, ConfigError
from gateway.logsetup import get_logger
from gateway.predictions import PredictionBatch

from ._process import settle_heap, shutdown_grace, watch_parent

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["BatchServer", "batcher_main"]

_log = get_logger("cm-gateway.classify._batcher")


def _forget(calls: dict[int, asyncio.Task[None]], key: int, _done: object) -> None:
    calls.pop(key, None)


class BatchServer:
    """Serves ``classifier`` to workers over the Unix socket at ``path``."""

    def __init__(
        self,
        classifier: Classifier,
        events: MetricEvents,
        path: str,
        threads: ThreadMemory | None = None,
    ) -> None:
        self.classifier = classifier
        # The workers' conversation memory, when it lives in a process (memory://).
        self.threads = threads
        self.events = events
        self.path = path
        self._server: asyncio.Server | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self._workers: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._no_workers = asyncio.Event()
        self._no_workers.set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve_worker, path=self.path)
        os.chmod(self.path, 0o600)

    async def workers_gone(self) -> None:
        """Wait until no worker is connected."""
        await self._no_workers.wait()

    async def aclose(self) -> None:
        """Stop accepting, answer what is under way, hang up, close the classifier."""
        if self._server is not None:
            self._server.close()
        if self._answers:
            await asyncio.gather(*self._answers, return_exceptions=True)
        handlers = list(self._workers.values())
        for writer in list(self._workers):
            writer.close()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        await self.classifier.aclose()
        if self.threads is not None:
            await self.threads.aclose()

    async def _serve_worker(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._workers[writer] = handler
        self._no_workers.clear()
        calls: dict[int, asyncio.Task[None]] = {}
        try:
            while (payload := await read_frame(reader)) is not None:
                request = decode_request(payload)
                if "cancel" in request:
                    call = calls.get(request["cancel"])
                    if call is not None:
                        call.cancel()
                    continue
                request_id = request["id"]
                if "documents" in request:
                    answer = self._answer(request_id, request["documents"], writer)
                else:
                    answer = self._answer_threads(request, writer)
                task = asyncio.create_task(answer)
                calls[request_id] = task
                self._answers.add(task)
                task.add_done_callback(self._answers.discard)
                task.add_done_callback(functools.partial(_forget, calls, request_id))
        except (FrameError, ValueError, KeyError, ConnectionError) as exc:
            _log.error("batcher_worker_stream_broken", error=str(exc))
        finally:
            # A worker that went away no longer waits: its documents need not be billed.
            for call in list(calls.values()):
                call.cancel()
            writer.close()
            del self._workers[writer]
            if not self._workers:
                self._no_workers.set()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _answer_threads(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """A recall (answered with the rules) or a remember (answered empty)."""
        rules: list[str] = []
        if self.threads is not None:
            if "recall" in request:
                rules = sorted(await self.threads.recall(request["recall"]))
            else:
                await self.threads.remember(request["remember"], request["rules"])
        reply = encode_reply(request["id"], events=[], circuits={}, rules=rules)
        if not writer.is_closing():
            writer.write(reply)

    async def _answer(
        self, request_id: int, documents: list[RawEmailDocument], writer: asyncio.StreamWriter
    ) -> None:
        batch: PredictionBatch | None = None
        error: Exception | None = None
        try:
            batch = await self.classifier.predict_raw_emails(documents)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # every failure goes back to the worker, by kind
            if not isinstance(exc, ClassifierError):
                _log.exception("batcher_unexpected_error")
            error = exc
        reply = encode_reply(
            request_id,
            batch=batch,
            error=error,
            events=self.events.take(),
            circuits=self.events.circuits,
            gauges=self.events.gauges,
        )
        if not writer.is_closing():
            writer.write(reply)


def _parent_gone(stop: asyncio.Event) -> None:
    _log.error("batcher_parent_gone")
    stop.set()


async def serve_batcher(config: Config, path: str, ready: Connection | None = None) -> int:
    """Run the batcher on ``path`` until SIGTERM (or the parent's exit)."""
    events = MetricEvents()
    threads = build_thread_memory(config) if threads_in_process(config) else None
    server = BatchServer(build_live_classifier(config, events), events, path, threads)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    gone = functools.partial(_parent_gone, stop)
    watcher = asyncio.create_task(watch_parent(os.getppid(), gone, stop))
    settle_heap()  # as the workers do (gateway.ops.Service.start)
    _log.info("batcher_ready", classifier=server.classifier.description, pid=os.getpid())
    if ready is not None:
        ready.send_bytes(b"ready")
        ready.close()
    try:
        await stop.wait()
        # SIGTERM may reach the whole process group at once (`kill -- -PGID`, a
        # terminal's or a supervisor's group signal): the workers draining their sessions
        # still need answers, so wait for them to hang up, as long as they may drain.
        grace = shutdown_grace(config) + config.classifier.timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.workers_gone(), grace)
    finally:
        watcher.cancel()
        loop.remove_signal_handler(signal.SIGTERM)
        await server.aclose()
    _log.info("batcher_stopped")
    return 0


def batcher_main(config_path: str | None, path: str, ready: Connection) -> None:
    """The batcher process (spawned by ``_supervisor.run_workers``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Imported here, as in the workers: the spawned process starts from nothing.
    from gateway.config import load_config
    from gateway.logsetup import configure_logging

    from ._eventloop import run_loop
    from ._process import register_secrets

    config = load_config(config_path)
    configure_logging(config.log.level, config.log.format)
    register_secrets(config)
    import structlog

    structlog.contextvars.bind_contextvars(worker="batcher")
    try:
        status = run_loop(serve_batcher(config, path, ready), config.smtp.event_loop)
    except ConfigError as exc:
        print(f"cm-gateway: batcher: {exc}", file=sys.stderr)
        status = 2
    sys.exit(status)
