"""The benchmark's own SMTP load generator, for what ``smtp-source`` cannot measure.

``smtp-source`` gives the peak rate; it cannot time single messages nor retry a 4xx.
This driver (aiosmtplib, persistent sessions like Postfix's connection cache) does both:

- ``drive_closed``: S sessions send N distinct messages as fast as replies come back; a
  4xx is retried after ``retry_delay`` like a queueing MTA would (the billing test);
- ``drive_open``: messages at a fixed rate (open loop), for latency at a given load;
- ``ping``: NOOP round trips on an idle session, to see the server's event loop stall.

The latency of a message is the time from the start of its DATA command to the reply
after the final dot: what the server adds, without our own MAIL/RCPT round trips.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

import aiosmtplib

__all__ = [
    "DriveResult",
    "drive_closed",
    "drive_open",
    "make_message",
    "percentile",
    "ping",
    "trickle",
]

# Per socket operation (aiosmtplib), generous: this machine is slow and shared.
IO_TIMEOUT = 120.0

# One order number per mail, then plain filler: an entity on every line would make the
# emulator's model (which runs on the same 2 cores) the slowest part of the benchmark.
_FIRST = "please find the invoice for order ORD-{n:06d} and confirm the refund status\r\n"
_WORDS = (
    "as soon as possible thank you for the quick answer the team will look at the "
    "question next week and come back to you with the details of the account "
)


# The subject and body repeat every TEXT_PERIOD messages; the Message-ID never does. The
# emulator (on the same 2 cores as the system under test) scores a text it has seen from
# its memo of 4,096 (``emulator._model.MEMO_ENTRIES``); a new text costs it ~3.5 x the CPU
# (0.78 against 0.22 ms per message through the gateway), a tenant's work that is not on
# this machine in production. Until this, the memo almost never hit: the body was cut to
# fit the head, whose Message-ID and Date vary, so the same index gave another text, and
# 5,000 texts in the half-load phase would have overrun it anyway. The gateway still sees
# distinct documents (the raw headers differ): nothing is deduplicated, each is billed.
TEXT_PERIOD = 4000
_HEAD_BUDGET = 300  # about the head's length (From, To, Subject, Date, Message-ID, MIME)


def make_message(tag: str, index: int, size: int) -> bytes:
    """A distinct plain-text mail of about ``size`` bytes (headers included)."""
    n = index % TEXT_PERIOD
    head = (
        f"From: Bench Sender <sender@bench.example>\r\nTo: triage@example.com\r\n"
        f"Subject: Bench message {n} invoice question\r\n"
        f"Date: {formatdate(localtime=True)}\r\n"
        f"Message-ID: <{tag}.{index}@bench.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    first = _FIRST.format(n=n)
    # A fixed budget for the head, not its length: the Message-ID and Date vary, and a
    # body cut to fit them would make the same text differ by a character or two.
    body_len = max(size - _HEAD_BUDGET - len(first), 0)
    body = (_WORDS * (body_len // len(_WORDS) + 1))[:body_len]
    lines = "\r\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    return (head + first + lines + "\r\n").encode("ascii")


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class DriveResult:
    """What one drive saw."""

    distinct: int = 0
    delivered: int = 0
    attempts: int = 0
    tempfails: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)  # open loop: start delay vs schedule
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        """Delivered messages per second."""
        return self.delivered / self.elapsed if self.elapsed else 0.0

    def summary(self) -> dict[str, float]:
        """p50/p99/max latency in ms and the rate."""
        ms = [x * 1000 for x in self.latencies]
        return {
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms, default=float("nan")),
            "mean_ms": statistics.fmean(ms) if ms else float("nan"),
            "msgs_s": self.rate,
        }


async def _connect(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, timeout=IO_TIMEOUT, start_tls=False,
        local_hostname="loadgen.bench.example",
    )  # fmt: skip
    await client.connect()
    await client.ehlo()
    return client


async def _send_one(client: aiosmtplib.SMTP, content: bytes, result: DriveResult) -> int:
    """One transaction; returns the reply code to DATA (or of the refusal before it)."""
    result.attempts += 1
    try:
        await client.mail("sender@bench.example")
        await client.rcpt("triage@example.com")
        started = time.perf_counter()
        response = await client.data(content)
        result.latencies.append(time.perf_counter() - started)
        return response.code
    except aiosmtplib.SMTPResponseException as exc:
        if client.is_connected:
            await client.rset()
        return exc.code


async def drive_closed(
    port: int,
    messages: list[bytes],
    *,
    sessions: int,
    retry_delay: float = 0.5,
    max_attempts: int = 5,
) -> DriveResult:
    """Send every message through ``sessions`` parallel sessions, retrying 4xx."""
    result = DriveResult(distinct=len(messages))
    queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
    for i in range(len(messages)):
        queue.put_nowait((i, 1))
    outstanding = len(messages)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def finish_one() -> None:
        nonlocal outstanding
        outstanding -= 1
        if outstanding == 0:
            done.set()
            for _ in range(sessions):
                queue.put_nowait(None)

    async def session() -> None:
        client = await _connect(port)
        try:
            while (item := await queue.get()) is not None:
                index, attempt = item
                code = await _send_one(client, messages[index], result)
                if 200 <= code < 300:
                    result.delivered += 1
                    finish_one()
                elif 400 <= code < 500 and attempt < max_attempts:
                    result.tempfails += 1
                    loop.call_later(retry_delay, queue.put_nowait, (index, attempt + 1))
                else:
                    result.failed += 1
                    finish_one()
                if not client.is_connected:
                    client = await _connect(port)
        finally:
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    result.elapsed = time.perf_counter() - started
    return result


async def drive_open(
    port: int,
    messages: list[bytes],
    *,
    rate: float,
    sessions: int,
) -> DriveResult:
    """Start one message every ``1/rate`` s on an idle session (no retries)."""
    result = DriveResult(distinct=len(messages))
    idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for client in await asyncio.gather(*(_connect(port) for _ in range(sessions))):
        idle.put_nowait(client)

    async def one(index: int, due: float) -> None:
        client = await idle.get()
        result.late.append(time.perf_counter() - due)
        try:
            code = await _send_one(client, messages[index], result)
        finally:
            if not client.is_connected:
                client = await _connect(port)
            idle.put_nowait(client)
        if 200 <= code < 300:
            result.delivered += 1
        else:
            result.failed += 1

    started = time.perf_counter()
    tasks = []
    for i in range(len(messages)):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - started
    while not idle.empty():
        idle.get_nowait().close()
    return result


async def ping(
    port: int, stop: Callable[[], bool], *, interval: float = 0.01
) -> list[tuple[float, float]]:
    """NOOP round trips until ``stop()``: [(perf_counter at start, seconds)]."""
    client = await _connect(port)
    samples: list[tuple[float, float]] = []
    try:
        while not stop():
            started = time.perf_counter()
            await client.noop()
            samples.append((started, time.perf_counter() - started))
            await asyncio.sleep(interval)
    finally:
        client.close()
    return samples


async def trickle(
    port: int,
    stop: Callable[[], bool],
    *,
    tag: str,
    size: int = 4096,
    interval: float = 0.02,
) -> list[tuple[float, float, int]]:
    """Small mails one after another on one session until ``stop()``:
    [(perf_counter at DATA, seconds, reply code)]."""
    client = await _connect(port)
    samples: list[tuple[float, float, int]] = []
    scratch = DriveResult()
    index = 0
    try:
        while not stop():
            started = time.perf_counter()
            timed = len(scratch.latencies)
            code = await _send_one(client, make_message(tag, index, size), scratch)
            ended = time.perf_counter()
            latency = scratch.latencies[-1] if len(scratch.latencies) > timed else ended - started
            samples.append((started, latency, code))
            index += 1
            await asyncio.sleep(interval)
    finally:
        client.close()
    return samples
