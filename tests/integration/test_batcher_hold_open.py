"""Batches grow with the load: a batch that is due while every request slot is busy stays
open until a slot frees, instead of queueing as one more request (real HTTP, emulator)."""

from __future__ import annotations

import pytest

from gateway.classify import BatchingClassifier
from gateway.testing import EmulatorHandle

from .batcher_support import http_client, staggered

pytestmark = pytest.mark.emulator(per_test=True, latency_ms=800)


def batcher_for(emu: EmulatorHandle, *, max_in_flight: int) -> BatchingClassifier:
    return BatchingClassifier(
        http_client(emu), max_batch=64, max_wait_ms=10, max_in_flight=max_in_flight
    )


async def test_documents_due_while_every_slot_is_busy_share_the_next_request(
    emulator: EmulatorHandle,
) -> None:
    """One slot, a slow API: five documents arriving 40 ms apart (each past max_wait_ms)
    behind a request in flight travel together in the next request, not in five."""
    batcher = batcher_for(emulator, max_in_flight=1)
    await staggered(batcher, 6, 0.04, "hold")
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1, 5]
    assert emulator.stats()["requests"] == 2


async def test_a_due_batch_still_starts_at_once_when_a_slot_is_free(
    emulator: EmulatorHandle,
) -> None:
    """Two slots: the second document, due while the first request is in flight, does not
    wait for it (the requests overlap)."""
    batcher = batcher_for(emulator, max_in_flight=2)
    await staggered(batcher, 2, 0.04, "hold")
    await batcher.aclose()
    assert list(batcher.batch_sizes) == [1, 1]
    assert batcher.peak_in_flight == 2
