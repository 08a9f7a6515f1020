"""The shared batcher (``[smtp] workers > 1``): one process classifies for every worker.

These tests run ``batch_server.BatchServer`` on a real Unix socket in front of the HTTP
emulator, with ``batch_client.RemoteClassifier``s standing in for the workers (one
connection each, as a worker has). The processes themselves are tested through
``cm-gateway serve`` in ``test_shared_batcher_cli.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.classify import (
    MetricEvents,
    RemoteClassifier,
    RemoteThreads,
    build_live_classifier,
    build_thread_memory,
)
from gateway.config import Config
from gateway.documents import RawEmailDocument
from gateway.errors import CircuitOpenError, ClassifierError, TransportError
from gateway.metrics import GatewayMetrics
from gateway.ops._batcher_process import BatchServer
from gateway.testing import EmulatorHandle

from . import batcher_support
from .ops_support import emulator_classifier, sample
from .pipeline_support import make_config

pytestmark = pytest.mark.emulator(per_test=True, latency_ms=500, token_env="REINFER_TOKEN")

FOREVER_MS = 600_000.0
PATIENCE_S = 30.0


def doc(i: int) -> RawEmailDocument:
    return batcher_support.doc(i, "shared")


def config_for(tmp_path: Path, emu: EmulatorHandle, **classifier: object) -> Config:
    # Group commit (target_batch 0): a batch gathers while the running request lasts.
    values: dict[str, object] = {
        "timeout": 20.0,
        "max_wait_ms": FOREVER_MS,
        "target_batch": 0,
        **classifier,
    }
    settings = emulator_classifier(emu, send_when_idle=True, **values)
    return make_config(tmp_path, downstream="maildir://var/maildir", classifier=settings)


@asynccontextmanager
async def batcher_with_workers(
    config: Config, workers: int = 2
) -> AsyncIterator[tuple[BatchServer, list[RemoteClassifier], list[GatewayMetrics]]]:
    """A batch server on a socket in ``tmp_path`` and one client (and metrics) per worker."""
    events = MetricEvents()
    path = str(Path(config.source or ".").parent / "batcher.sock")
    threads = build_thread_memory(config)
    server = BatchServer(build_live_classifier(config, events), events, path, threads)
    await server.start()
    metrics = [GatewayMetrics() for _ in range(workers)]
    clients = [RemoteClassifier(path, deadline=PATIENCE_S, metrics=m) for m in metrics]
    try:
        yield server, clients, metrics
    finally:
        for client in clients:
            await client.aclose()
        await server.aclose()


def total(metrics: list[GatewayMetrics], name: str) -> float:
    return sum(sample(m.render().decode(), name) for m in metrics)


async def test_documents_of_two_workers_travel_in_one_request(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """Worker 0's first document goes at once (the API is idle); three documents from
    each worker, arriving while it runs, share the next request."""
    async with batcher_with_workers(config_for(tmp_path, emulator)) as (_, clients, metrics):
        first = asyncio.create_task(clients[0].predict_raw_emails([doc(0)]))
        await asyncio.sleep(0.1)
        rest = [
            asyncio.create_task(clients[i % 2].predict_raw_emails([doc(i)])) for i in range(1, 7)
        ]
        results = await asyncio.wait_for(asyncio.gather(first, *rest), PATIENCE_S)
    assert all(len(r.predictions) == 1 and r.predictions[0].labels for r in results)
    assert emulator.stats()["requests"] == 2
    # What the batcher process counted reached the workers, each event exactly once.
    assert total(metrics, "cm_gateway_api_requests_total") == 2
    assert total(metrics, "cm_gateway_documents_billed_total") == 7
    assert total(metrics, "cm_gateway_batch_size_count") == 2
    assert total(metrics, "cm_gateway_api_requests_in_flight") == 0


async def test_a_message_retried_through_another_worker_is_billed_once(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """One dedup cache for all workers: the copy worker 1 receives later reuses worker
    0's prediction, with no request."""
    async with batcher_with_workers(config_for(tmp_path, emulator)) as (_, clients, metrics):
        original = await asyncio.wait_for(clients[0].predict_raw_emails([doc(1)]), PATIENCE_S)
        retried = await asyncio.wait_for(clients[1].predict_raw_emails([doc(1)]), PATIENCE_S)
    assert retried.predictions == original.predictions
    assert emulator.stats()["documents_billed"] == 1
    assert total(metrics, "cm_gateway_cache_hits_total") == 1
    assert total(metrics, "cm_gateway_cache_misses_total") == 1


async def test_a_failed_request_reaches_the_worker_as_the_same_error(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """The worker raises the class and kind the in-process stack raises, so the message
    follows on_error with the same ``X-CM-Status`` reason."""
    # 401: answered at once and never retried, so both stacks end the same way.
    emulator.set_faults(fail_rate=1.0, fail_status=401, latency_ms=0)
    config = config_for(tmp_path, emulator)
    local = build_live_classifier(config)
    with pytest.raises(ClassifierError) as in_process:
        await local.predict_raw_emails([doc(1)])
    await local.aclose()
    async with batcher_with_workers(config) as (_, clients, metrics):
        with pytest.raises(ClassifierError) as remote:
            await asyncio.wait_for(clients[0].predict_raw_emails([doc(2)]), PATIENCE_S)
    assert type(remote.value) is type(in_process.value)
    assert remote.value.kind == in_process.value.kind == "auth"
    assert remote.value.status == 401
    assert sample(metrics[0].render().decode(), 'cm_gateway_api_errors_total{kind="auth"}') == 1


async def test_a_worker_whose_caller_gave_up_is_not_billed(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """Worker 1's document waits for the next batch while worker 0's runs; its caller
    gives up (the SMTP client hung up): the batch goes without it."""
    async with batcher_with_workers(config_for(tmp_path, emulator)) as (_, clients, _metrics):
        first = asyncio.create_task(clients[0].predict_raw_emails([doc(0)]))
        await asyncio.sleep(0.1)
        abandoned = asyncio.create_task(clients[1].predict_raw_emails([doc(1)]))
        kept = asyncio.create_task(clients[0].predict_raw_emails([doc(2)]))
        await asyncio.sleep(0.1)
        abandoned.cancel()
        await asyncio.wait_for(asyncio.gather(first, kept), PATIENCE_S)
    stats = emulator.stats()
    assert stats["documents_billed"] == 2
    assert "shared-1" not in stats["documents_by_comment_id"]


async def test_a_batcher_that_hangs_up_fails_the_call_as_a_transport_error(
    tmp_path: Path,
) -> None:
    """A batcher process that dies mid-call: the worker's caller gets a
    ``TransportError`` (on_error applies), not a hang and not a 451."""
    path = str(tmp_path / "dead.sock")

    async def accept_and_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4)
        writer.close()

    server = await asyncio.start_unix_server(accept_and_die, path=path)
    client = RemoteClassifier(path, deadline=PATIENCE_S)
    try:
        with pytest.raises(TransportError, match="closed the connection"):
            await asyncio.wait_for(client.predict_raw_emails([doc(1)]), PATIENCE_S)
    finally:
        await client.aclose()
        server.close()


async def test_no_batcher_listening_is_a_transport_error(tmp_path: Path) -> None:
    client = RemoteClassifier(str(tmp_path / "absent.sock"), deadline=PATIENCE_S)
    with pytest.raises(TransportError, match="cannot reach the batcher process"):
        await client.predict_raw_emails([doc(1)])
    await client.aclose()


async def test_the_circuit_opens_for_every_worker_at_once(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """Worker 0's failed request opens the one circuit: worker 1's next call fails at
    once without a request, and both workers' gauges say open; the transition is
    counted once over the workers."""
    emulator.set_faults(fail_rate=1.0, fail_status=503, latency_ms=0)
    config = config_for(tmp_path, emulator, timeout=0.3, circuit_failures=1)
    async with batcher_with_workers(config) as (_, clients, metrics):
        with pytest.raises(ClassifierError):
            await asyncio.wait_for(clients[0].predict_raw_emails([doc(1)]), PATIENCE_S)
        requests = emulator.stats()["requests"]
        with pytest.raises(CircuitOpenError):
            await asyncio.wait_for(clients[1].predict_raw_emails([doc(2)]), PATIENCE_S)
        assert emulator.stats()["requests"] == requests
    state = 'cm_gateway_circuit_state{classifier="live"}'
    assert [sample(m.render().decode(), state) for m in metrics] == [1, 1]
    opened = 'cm_gateway_circuit_transitions_total{classifier="live",state="open"}'
    assert total(metrics, opened) == 1


async def test_every_worker_shows_what_the_adaptive_batcher_learned(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """The batcher process's learned API latency and batch target reach each worker's
    /metrics with its replies (gauges: the latest values, not a sum)."""
    emulator.set_faults(latency_ms=60)
    config = config_for(tmp_path, emulator, target_batch="auto", max_wait_ms=20)
    async with batcher_with_workers(config) as (_, clients, metrics):
        for i, client in enumerate(clients):
            await asyncio.wait_for(client.predict_raw_emails([doc(i)]), PATIENCE_S)
    for m in metrics:
        text = m.render().decode()
        assert 0.06 <= sample(text, "cm_gateway_batcher_latency_seconds") < 5
        assert sample(text, "cm_gateway_batcher_target_documents") >= 1


async def test_every_worker_recalls_the_threads_any_worker_remembered(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """With a cache in memory the batcher process keeps the conversation memory
    (``thread`` conditions): what worker 0 remembered of a thread, worker 1 recalls. A
    batcher that is gone means "nothing remembered", never a failed message."""
    config = config_for(tmp_path, emulator)
    async with batcher_with_workers(config) as (_, clients, _metrics):
        first, second = (RemoteThreads(client) for client in clients)
        await first.remember(["<root@x>", "<m1@x>"], {"queue-finance", "vip"})
        assert await second.recall(["<m2@x>", "<root@x>"]) == {"queue-finance", "vip"}
        assert await second.recall(["<unknown@x>"]) == frozenset()
        await second.remember(["<root@x>"], {"queue-it"})
        assert await first.recall(["<root@x>"]) == {"queue-finance", "queue-it", "vip"}
    gone = RemoteClassifier(str(tmp_path / "batcher.sock"), deadline=PATIENCE_S)
    assert await RemoteThreads(gone).recall(["<root@x>"]) == frozenset()
    await RemoteThreads(gone).remember(["<root@x>"], {"queue-it"})
    await gone.aclose()
