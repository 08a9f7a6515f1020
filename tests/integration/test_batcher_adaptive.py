"""The adaptive batcher (``target_batch = "auto"``, the default) over real HTTP to the
emulator: a lone message goes at once, and a closed loop of sessions settles into
batches of about half of them, without a setting."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import pytest

from gateway.classify import BatchingClassifier
from gateway.documents import RawEmailDocument
from gateway.predictions import PredictionBatch
from gateway.testing import EmulatorHandle, running_emulator

from .batcher_support import doc, http_client

LATENCY_MS = 100.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator(latency_ms=LATENCY_MS) as emu:
        yield emu


def adaptive(emu: EmulatorHandle) -> BatchingClassifier:
    """The batcher as the defaults build it: adaptive, max_wait_ms 200 as the ceiling."""
    return BatchingClassifier(http_client(emu), max_wait_ms=200.0, adaptive=True)


async def test_a_lone_message_at_idle_waits_for_the_api_alone(emulator: EmulatorHandle) -> None:
    """At idle a message's request leaves at once: it does not wait for company (a
    batch that waited would leave after half the learned latency, ~50 ms)."""
    inner = http_client(emulator)
    sent_at: list[float] = []
    predict = inner.predict_raw_emails

    async def timed(documents: list[RawEmailDocument]) -> PredictionBatch:
        sent_at.append(time.monotonic())
        return await predict(documents)

    inner.predict_raw_emails = timed  # type: ignore[method-assign,assignment]
    batcher = BatchingClassifier(inner, max_wait_ms=200.0, adaptive=True)
    await batcher.predict_raw_emails([doc(0, "warm")])  # the connection, once
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await batcher.predict_raw_emails([doc(1, "lone")])
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1, 1]
    # Measured from the call to the request leaving (no network in between), so a
    # loaded machine adds only this loop's scheduling, far below the 50 ms of a wait.
    assert sent_at[-1] - started < 0.025, sent_at[-1] - started
    assert batcher.policy is not None and batcher.policy.latency is not None
    assert 0.09 <= batcher.policy.latency < 0.5


async def test_a_closed_loop_settles_into_two_groups_of_half_the_sessions(
    emulator: EmulatorHandle,
) -> None:
    """20 sessions, each sending its next message when the last one is answered: after
    the ramp from idle, requests carry about 10 documents each, and no message waits for
    a batch longer than the learned ceiling of half the API's latency on top of it."""
    sessions, rounds = 20, 12
    batcher = adaptive(emulator)
    waits: list[float] = []

    async def session(s: int) -> None:
        for r in range(rounds):
            started = time.monotonic()
            await batcher.predict_raw_emails([doc(s * 100 + r, "loop")])
            waits.append(time.monotonic() - started)

    await asyncio.wait_for(asyncio.gather(*(session(s) for s in range(sessions))), 60.0)
    await batcher.aclose()
    steady = list(batcher.batch_sizes)[len(batcher.batch_sizes) // 2 :]
    assert statistics.mean(steady) >= sessions / 3, batcher.batch_sizes
    assert batcher.requests <= sessions * rounds / 5, batcher.batch_sizes
    # 100 ms of API; what the batcher adds is bounded by about 50 ms (plus the load).
    assert statistics.median(waits) < 0.2, statistics.median(waits)
