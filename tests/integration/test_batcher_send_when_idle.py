"""Group commit: with ``send_when_idle`` a batch goes as soon as no request is running,
and what gathers while one runs goes when it ends; ``max_wait_ms`` is only a ceiling
(real HTTP, emulator). Each test's ``max_wait_ms`` is far longer than its timeout, so a
batch that waited for it would fail the test rather than slow it down."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.classify import BatchingClassifier
from gateway.classify._batcher import HEAD_START_TURNS
from gateway.documents import RawEmailDocument
from gateway.testing import EmulatorHandle

from . import batcher_support
from .batcher_support import http_client, staggered
from .ops_support import emulator_classifier, numbered_mail, running_gateway

pytestmark = pytest.mark.emulator(per_test=True, latency_ms=500)

FOREVER_MS = 600_000.0
PATIENCE_S = 20.0


def doc(i: int) -> RawEmailDocument:
    return batcher_support.doc(i, "idle")


def batcher_for(
    emu: EmulatorHandle,
    *,
    max_in_flight: int = 4,
    max_batch: int = 64,
    max_wait_ms: float = FOREVER_MS,
    min_batch: int = 1,
    target_batch: int = 0,
) -> BatchingClassifier:
    """Group commit over the real HTTP client; ``max_wait_ms`` ten minutes unless given."""
    return BatchingClassifier(
        http_client(emu),
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_in_flight=max_in_flight,
        send_when_idle=True,
        min_batch=min_batch,
        target_batch=target_batch,
    )


async def test_a_lone_document_goes_at_once_when_no_request_is_running(
    emulator: EmulatorHandle,
) -> None:
    batcher = batcher_for(emulator)
    result = await asyncio.wait_for(batcher.predict_raw_emails([doc(1)]), PATIENCE_S)
    await batcher.aclose()
    assert len(result.predictions) == 1
    assert list(batcher.batch_sizes) == [1]


async def test_documents_arriving_during_a_request_go_together_when_it_ends(
    emulator: EmulatorHandle,
) -> None:
    """The first goes alone; five arriving 40 ms apart while it runs (500 ms) share the
    next request, sent when the first ends, not after max_wait_ms."""
    batcher = batcher_for(emulator)
    await asyncio.wait_for(staggered(batcher, 6, 0.04, "idle"), PATIENCE_S)
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1, 5]
    assert batcher.peak_in_flight == 1
    assert emulator.stats()["requests"] == 2


async def test_one_callers_documents_stay_in_one_request(emulator: EmulatorHandle) -> None:
    """A caller with several documents (``cm-gateway classify``) is not split by the
    idle dispatch of its first document."""
    batcher = batcher_for(emulator)
    result = await asyncio.wait_for(
        batcher.predict_raw_emails([doc(i) for i in range(7)]), PATIENCE_S
    )
    await batcher.aclose()
    assert len(result.predictions) == 7
    assert list(batcher.batch_sizes) == [7]


async def test_max_batch_still_closes_a_batch_while_a_request_runs(
    emulator: EmulatorHandle,
) -> None:
    batcher = batcher_for(emulator, max_batch=3)
    first = asyncio.create_task(batcher.predict_raw_emails([doc(0)]))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.predict_raw_emails([doc(i)])) for i in range(1, 7)]
    await asyncio.wait_for(asyncio.gather(first, *rest), PATIENCE_S)
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1, 3, 3]
    assert batcher.peak_in_flight == 3


async def test_the_gateway_answers_at_light_load_without_waiting_max_wait_ms(
    tmp_path: Path, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through SMTP: ``send_when_idle`` is on by default, so with ``max_wait_ms`` at ten
    minutes a lone message is still classified and relayed within seconds."""
    monkeypatch.setenv("REINFER_TOKEN", emulator.token or "")
    classifier = emulator_classifier(emulator, max_wait_ms=FOREVER_MS, timeout=30.0)
    async with running_gateway(tmp_path, classifier=classifier) as gw:
        code, _ = await asyncio.wait_for(gw.send(numbered_mail(1)), PATIENCE_S)
        assert code == 250
        assert gw.metric("cm_gateway_batch_size_count") == 1


async def test_the_next_request_is_under_way_before_the_callers_of_the_last_one_resume(
    emulator: EmulatorHandle,
) -> None:
    """When a request ends, what gathered meanwhile is sent before its callers go on to
    their rules and relays: the next request gets HEAD_START_TURNS loop turns (httpx
    needs about 4 to write it) before the first caller resumes."""
    turns = 0
    ticking = True

    async def ticker() -> None:
        nonlocal turns
        while ticking:
            turns += 1
            await asyncio.sleep(0)

    started_at: list[int] = []
    client = http_client(emulator)

    class Recording:
        """The real client, noting the loop turn at which each request starts."""

        description = "recording"

        async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> Any:
            started_at.append(turns)
            return await client.predict_raw_emails(documents)

        async def aclose(self) -> None:
            await client.aclose()

    batcher = BatchingClassifier(
        Recording(), max_batch=64, max_wait_ms=FOREVER_MS, max_in_flight=4, send_when_idle=True
    )
    resumed_at: list[int] = []

    async def call(i: int) -> None:
        await batcher.predict_raw_emails([doc(i)])
        resumed_at.append(turns)

    tick = asyncio.create_task(ticker())
    first = asyncio.create_task(call(0))
    await asyncio.sleep(0.1)  # request 1 (500 ms) is running
    second = asyncio.create_task(call(1))
    await asyncio.wait_for(asyncio.gather(first, second), PATIENCE_S)
    ticking = False
    await tick
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1, 1]
    assert resumed_at[0] - started_at[1] >= HEAD_START_TURNS


async def test_a_batch_under_min_batch_waits_for_more_even_when_the_api_is_idle(
    emulator: EmulatorHandle,
) -> None:
    """``min_batch`` 3: two documents on an idle API do not go (``max_wait_ms`` is ten
    minutes); the third completes the batch and all three go at once, in one request."""
    batcher = batcher_for(emulator, min_batch=3)
    early = [asyncio.create_task(batcher.predict_raw_emails([doc(i)])) for i in range(2)]
    await asyncio.sleep(0.3)
    assert batcher.requests == 0
    last = asyncio.create_task(batcher.predict_raw_emails([doc(2)]))
    await asyncio.wait_for(asyncio.gather(*early, last), PATIENCE_S)
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [3]


async def test_a_batch_under_min_batch_still_goes_when_max_wait_ms_passes(
    emulator: EmulatorHandle,
) -> None:
    """``min_batch`` is a wish, ``max_wait_ms`` the promise: a lone document goes after
    ``max_wait_ms`` (200 ms), not before and not never."""
    batcher = batcher_for(emulator, max_wait_ms=200, min_batch=10)
    lone = asyncio.create_task(batcher.predict_raw_emails([doc(0)]))
    await asyncio.sleep(0.1)
    assert batcher.requests == 0
    await asyncio.wait_for(lone, PATIENCE_S)
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1]


async def test_min_batch_over_max_batch_is_refused(emulator: EmulatorHandle) -> None:
    client = http_client(emulator)
    with pytest.raises(ValueError, match="min_batch"):
        BatchingClassifier(client, max_batch=4, min_batch=5)
    await client.aclose()


async def test_a_batch_at_target_batch_goes_while_another_request_runs(
    emulator: EmulatorHandle,
) -> None:
    """``target_batch`` 3: the first document goes alone (idle API); three arriving while
    it runs (500 ms) go at once as a second request beside it, not when it ends; the
    next two wait for a request to end (fewer than the target)."""
    batcher = batcher_for(emulator, target_batch=3)
    await asyncio.wait_for(staggered(batcher, 6, 0.04, "target"), PATIENCE_S)
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1, 3, 2]
    assert batcher.peak_in_flight == 2


async def test_a_batch_past_target_batch_keeps_growing_while_every_slot_is_busy(
    emulator: EmulatorHandle,
) -> None:
    """One slot: the batch passes the target (2) while the slot is busy and goes whole,
    five documents in one request, when the first request ends."""
    batcher = batcher_for(emulator, target_batch=2, max_in_flight=1)
    await asyncio.wait_for(staggered(batcher, 6, 0.04, "target"), PATIENCE_S)
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1, 5]
    assert batcher.peak_in_flight == 1


@pytest.mark.parametrize("target", [65, 2])
async def test_target_batch_outside_min_batch_to_max_batch_is_refused(
    emulator: EmulatorHandle, target: int
) -> None:
    client = http_client(emulator)
    with pytest.raises(ValueError, match="target_batch"):
        BatchingClassifier(client, max_batch=64, min_batch=3, target_batch=target)
    await client.aclose()
