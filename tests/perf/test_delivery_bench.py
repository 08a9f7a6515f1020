"""CPU per message delivered through ``SmtpDelivery`` to Postfix's smtp-sink, with and
without PIPELINING (run with ``-m perf -s``)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import pytest

from gateway.deliver._delivery import SmtpDelivery

from .procs import Proc, free_port, postfix_tool, wait_port

pytestmark = pytest.mark.perf

MESSAGES = 2000
BODY = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n"
    + (b"x" * 76 + b"\r\n") * 52
)  # about 4 KB


async def _cpu_per_message(port: int) -> float:
    d = SmtpDelivery("127.0.0.1", port, timeout=30.0, local_hostname="gw.test", pool_size=4)
    assert (await d.deliver("a@example.com", ["b@example.com"], BODY)).delivered  # warm up

    async def worker(first: int) -> None:
        for i in range(first, MESSAGES, 8):
            result = await d.deliver("a@example.com", [f"r{i}@example.com"], BODY)
            assert result.delivered, result

    started = time.process_time()
    await asyncio.gather(*(worker(k) for k in range(8)))
    cpu = time.process_time() - started
    await d.aclose()
    return cpu / MESSAGES


@pytest.mark.parametrize("pipelining", [True, False])
def test_delivery_cpu_per_message(tmp_path: Path, pipelining: bool) -> None:
    """Median of 3 runs of 2,000 4 KB messages, 8 at a time through a pool of 4."""
    port = free_port()
    argv = [postfix_tool("smtp-sink")]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]  # smtp-sink refuses to run as root
    if not pipelining:
        argv.append("-p")  # do not offer PIPELINING: lock-step
    sink = Proc("smtp-sink", [*argv, f"127.0.0.1:{port}", "256"], log_dir=tmp_path)
    wait_port(port)
    try:
        runs = [asyncio.run(_cpu_per_message(port)) for _ in range(3)]
    finally:
        sink.stop()
    print(
        f"\ndelivery pipelining={pipelining}: CPU per message "
        f"{statistics.median(runs) * 1e6:.0f} us (runs {[round(r * 1e6) for r in runs]})"
    )
