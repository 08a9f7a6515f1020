"""The conversation memory runs beside the slower work of a message, not before it: the
recall while the message is classified, the remembering while it is delivered; and the
reply still waits for the remembering. Each test would deadlock into its timeout (and
fail) if the two were done one after the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from gateway.documents import RawEmailDocument
from gateway.pipeline import build_processor
from gateway.predictions import PredictionBatch
from gateway.replies import Reply
from gateway.testing import NextHopSink, ReceivedMessage, running_sink

from .pipeline_support import THREAD_RULES, FixedClassifier, inbound, mail, make_config

WAIT = 5.0
REPLY = mail("Re: invoice", "Paid, thanks.", headers=[("In-Reply-To", "<inv1@example.com>")])


class GatedMemory:
    """A ThreadMemory whose recall answers "finance" and whose remember ends only once
    the next hop has the message; both note when they started."""

    def __init__(self, sink: NextHopSink) -> None:
        self.sink = sink
        self.recalling = asyncio.Event()
        self.remembered = asyncio.Event()

    async def recall(self, thread_ids: Sequence[str]) -> frozenset[str]:
        self.recalling.set()
        return frozenset({"finance"})

    async def remember(self, thread_ids: Sequence[str], rules: Iterable[str]) -> None:
        # The delivery must run meanwhile (the sink raises after WAIT otherwise).
        await asyncio.to_thread(self.sink.wait_for, 1, timeout=WAIT)
        self.remembered.set()

    async def aclose(self) -> None:
        return None


class RecallFirst(FixedClassifier):
    """Answers "Finance > Invoice" once the thread's recall has started."""

    def __init__(self, memory: GatedMemory) -> None:
        super().__init__(labels=[(("Finance", "Invoice"), 0.9)])
        self.memory = memory

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        async with asyncio.timeout(WAIT):
            await self.memory.recalling.wait()
        return await super().predict_raw_emails(documents)


async def process_one(
    tmp_path: Path, content: bytes, classifier: Callable[[GatedMemory], FixedClassifier]
) -> tuple[Reply, ReceivedMessage, bool]:
    """One message through a pipeline with a ``GatedMemory``; (reply, delivered, whether
    the memory had remembered it when the reply came)."""
    with running_sink() as sink:
        memory = GatedMemory(sink)
        config = make_config(
            tmp_path,
            downstream=sink.url,
            rules_yaml=THREAD_RULES,
            classifier={"provider": "emulator", "timeout": 20},
        )
        pipeline = build_processor(config, classifier=classifier(memory), threads=memory)
        try:
            reply = await pipeline.process(inbound(content))
            remembered_first = memory.remembered.is_set()
        finally:
            await pipeline.aclose()
        (got,) = sink.received
    return reply, got, remembered_first


async def test_the_thread_is_recalled_while_the_message_is_classified(tmp_path: Path) -> None:
    reply, got, _ = await process_one(tmp_path, REPLY, RecallFirst)
    assert reply.code == 250
    assert got.header("X-CM-Status") == "classified"
    assert got.header("X-Thread") == "finance"


async def test_the_reply_waits_for_the_memory_written_while_the_message_is_delivered(
    tmp_path: Path,
) -> None:
    def invoices(_memory: GatedMemory) -> FixedClassifier:
        return FixedClassifier(labels=[(("Finance", "Invoice"), 0.9)])

    reply, got, remembered_first = await process_one(
        tmp_path, mail("Invoice", "INV-1 due"), invoices
    )
    assert reply.code == 250
    assert got.header("X-Queue") == "finance"
    # The 250 came only once the thread was remembered: a reply that follows at once
    # finds it.
    assert remembered_first
