"""What the batcher tests share: small documents and a real HTTP client to the emulator."""

from __future__ import annotations

import asyncio

from gateway.classify import BatchingClassifier, CommunicationsMiningClient
from gateway.classify._client import TenantEndpoint
from gateway.classify._retry import RetryPolicy
from gateway.documents import RawEmailDocument
from gateway.testing import EmulatorHandle


def doc(i: int, prefix: str) -> RawEmailDocument:
    """A one-line invoice mail, ``comment_id`` ``<prefix>-<i>``."""
    document: RawEmailDocument = {
        "raw_email": {
            "headers": {"raw": f"Subject: invoice {i}\r\nFrom: a{i}@example.org"},
            "body": {"plain": f"Please pay the invoice number {i}."},
        },
        "comment_id": f"{prefix}-{i}",
    }
    return document


def http_client(emu: EmulatorHandle) -> CommunicationsMiningClient:
    """The real client to ``emu``, one attempt per call (no retries to blur counts)."""
    endpoint = TenantEndpoint(emu.base_url, emu.project, emu.dataset, emu.token or "x")
    return CommunicationsMiningClient(endpoint, retry=RetryPolicy(attempts=1), timeout=30.0)


async def staggered(batcher: BatchingClassifier, count: int, gap: float, prefix: str) -> None:
    """``count`` one-document calls, started ``gap`` seconds apart; waits for them all."""
    calls = []
    for i in range(count):
        calls.append(asyncio.create_task(batcher.predict_raw_emails([doc(i, prefix)])))
        await asyncio.sleep(gap)
    await asyncio.gather(*calls)
