"""The adaptive batching policy (``target_batch = "auto"``), with a fake clock: the pure
policy, then the batcher driven by a fake API whose calls end when the test says."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.classify import BatchingClassifier
from gateway.classify._adaptive import LATENCY_WEIGHT, PRIOR_LATENCY, AdaptivePolicy
from gateway.documents import RawEmailDocument
from gateway.predictions import DocumentPrediction, PredictionBatch


def test_nothing_out_sends_a_lone_document_at_once() -> None:
    assert AdaptivePolicy(max_wait=60.0).ready(pending=1, out=0)


def test_nothing_out_still_waits_for_more_than_it_holds_coming_back() -> None:
    policy = loaded(50)
    # Both groups are back at once: 10 of one, 15 + 25 more due: wait for them.
    assert not policy.ready(pending=10, out=0, expected=40)
    # No more due than it holds (a stray message after the load): it goes at once.
    assert policy.ready(pending=1, out=0, expected=1)


def loaded(concurrency: int) -> AdaptivePolicy:
    policy = AdaptivePolicy(max_wait=60.0)
    policy.note(0.0, concurrency)
    return policy


def test_the_target_is_half_the_concurrency_seen_lately() -> None:
    policy = loaded(50)
    assert policy.target() == 25
    assert not policy.ready(pending=24, out=26, expected=5)
    assert policy.ready(pending=25, out=26, expected=5)
    # Fewer out than the target does not lower it: small groups would stay small.
    assert not policy.ready(pending=6, out=6, expected=5)


def test_a_group_all_back_goes_with_two_thirds_of_the_target() -> None:
    policy = loaded(50)
    assert policy.ready(pending=17, out=26, expected=0)
    assert not policy.ready(pending=17, out=26, expected=1)  # one more is on its way
    assert not policy.ready(pending=16, out=26, expected=0)  # stragglers wait to merge
    assert policy.quiet_ready(17) and not policy.quiet_ready(16)


def test_the_concurrency_forgets_a_peak_after_two_windows() -> None:
    policy = loaded(50)  # windows of 2 x 100 ms (the prior latency)
    policy.note(0.3, 4)
    assert policy.concurrency == 50  # the previous window still counts
    policy.note(0.5, 4)
    assert policy.concurrency == 4


def test_min_batch_holds_even_an_idle_batch() -> None:
    policy = AdaptivePolicy(max_wait=60.0, min_batch=3)
    assert not policy.ready(pending=2, out=0)
    assert policy.ready(pending=3, out=0)


def test_the_wait_is_half_the_learned_latency_under_the_ceiling() -> None:
    policy = AdaptivePolicy(max_wait=60.0)
    assert policy.wait() == pytest.approx(PRIOR_LATENCY / 2)
    policy.observe(0.200)
    assert policy.wait() == pytest.approx(0.100)
    policy.observe(0.100)
    learned = 0.200 + LATENCY_WEIGHT * (0.100 - 0.200)
    assert policy.latency == pytest.approx(learned)
    assert policy.wait() == pytest.approx(learned / 2)
    assert policy.quiet() == pytest.approx(learned / 10)
    assert AdaptivePolicy(max_wait=0.03, latency=0.2).wait() == pytest.approx(0.03)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HeldApi:
    """A fake API: each call waits until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[asyncio.Future[None]] = []
        self.sizes: list[int] = []
        self.description = "held"

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls.append(gate)
        self.sizes.append(len(documents))
        await gate
        prediction = DocumentPrediction(labels=(), entities=())
        return PredictionBatch(predictions=tuple(prediction for _ in documents))

    async def aclose(self) -> None:
        pass


def doc(i: int) -> RawEmailDocument:
    return {"raw_email": {"headers": {"raw": f"Subject: {i}"}, "body": {"plain": "x"}}}


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_sizes_grow_from_idle_and_a_group_that_is_back_goes_at_once() -> None:
    """One at a time, 8 callers: 1 alone (idle), then each batch goes at the target (half
    the documents seen, the one arriving included), or with 2/3 of it when nothing is due
    back: 1, 1, 2, 2; the last 2 wait (the ceiling is a minute). The second request
    ends, and its caller sends again: its group is back, and with 3 documents (2/3 of the
    target of 4) the batch goes without waiting for a 4th."""
    api, clock = HeldApi(), FakeClock()
    batcher = BatchingClassifier(
        api, max_wait_ms=60_000, max_in_flight=8, adaptive=True, clock=clock
    )
    calls = []
    for i in range(8):
        calls.append(asyncio.create_task(batcher.predict_raw_emails([doc(i)])))
        await settle()
    assert api.sizes == [1, 1, 2, 2]
    assert batcher.policy is not None and batcher.policy.target() == 4
    clock.now += 0.25
    api.calls[1].set_result(None)
    await settle()
    assert api.sizes == [1, 1, 2, 2]  # its caller is due back: wait for it
    calls.append(asyncio.create_task(batcher.predict_raw_emails([doc(8)])))
    await settle()
    assert api.sizes == [1, 1, 2, 2, 3]
    assert batcher.policy.latency == pytest.approx(0.25)
    for gate in api.calls:
        if not gate.done():
            gate.set_result(None)
    await asyncio.gather(*calls)
    await batcher.aclose()


async def test_a_lone_document_at_idle_goes_without_waiting() -> None:
    api = HeldApi()
    batcher = BatchingClassifier(api, max_wait_ms=60_000, adaptive=True, clock=FakeClock())
    call = asyncio.create_task(batcher.predict_raw_emails([doc(1)]))
    await settle()
    assert api.sizes == [1]
    api.calls[0].set_result(None)
    await call
    await batcher.aclose()


async def test_a_hung_request_holds_the_others_only_half_the_learned_latency() -> None:
    """The policy learned 40 ms; a request then hangs with 5 documents out: the next
    document goes after about 20 ms, not when the hung request ends."""
    api = HeldApi()
    batcher = BatchingClassifier(api, max_wait_ms=60_000, adaptive=True)
    assert batcher.policy is not None
    batcher.policy.observe(0.040)
    hung = asyncio.create_task(batcher.predict_raw_emails([doc(i) for i in range(5)]))
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    late = asyncio.create_task(batcher.predict_raw_emails([doc(9)]))
    while len(api.sizes) < 2:
        await asyncio.sleep(0.002)
        assert loop.time() - started < 5.0
    assert 0.015 <= loop.time() - started < 1.0
    for gate in api.calls:
        gate.set_result(None)
    await asyncio.gather(hung, late)
    await batcher.aclose()


async def test_a_group_half_back_when_the_other_ends_waits_for_the_rest_of_it() -> None:
    """Two groups of 4 out (the target is 4). The first ends and 2 of its callers are
    back; then the second ends too: nothing is out, but 6 are due back. The 2 wait, and
    go with the other 2 of their group: 4, not 2 now and 2 later (with group commit on,
    as ``send_when_idle = true`` configures it, the split stayed for good)."""
    api, clock = HeldApi(), FakeClock()
    batcher = BatchingClassifier(
        api, max_wait_ms=60_000, max_in_flight=8, adaptive=True, send_when_idle=True,
        clock=clock,
    )  # fmt: skip
    assert batcher.policy is not None
    batcher.policy.note(clock.now, 8)
    groups = [asyncio.create_task(batcher.predict_raw_emails([doc(g * 4 + i) for i in range(4)]))
              for g in range(2)]  # fmt: skip
    await settle()
    assert api.sizes == [4, 4]
    clock.now += 0.1
    api.calls[0].set_result(None)
    await groups[0]
    back = [asyncio.create_task(batcher.predict_raw_emails([doc(10 + i)])) for i in range(2)]
    await settle()
    clock.now += 0.01
    api.calls[1].set_result(None)
    await groups[1]
    await settle()
    assert api.sizes == [4, 4]  # 2 pending, nothing out, 6 due back: wait
    back += [asyncio.create_task(batcher.predict_raw_emails([doc(12 + i)])) for i in range(2)]
    await settle()
    assert api.sizes == [4, 4, 4]
    for gate in api.calls:
        if not gate.done():
            gate.set_result(None)
    await asyncio.gather(*back)
    await batcher.aclose()
