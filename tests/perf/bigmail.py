"""The big-message phase of the throughput benchmark (issue 5, item 5).

A fresh gateway (so that its peak RSS is this phase's own) relays one ``--big-mb``
message sent by ``smtp-source``, while the harness keeps two other sessions busy:

- a NOOP pinger: aiosmtpd answers NOOP on the event loop itself, so a NOOP round trip
  far above its median is the loop stalling (the harness's own loop adds noise too, which
  makes the figure an upper bound);
- a trickle of 4 KB mails on another session, classified and relayed as usual;
- a control pinger: NOOPs to an idle ``smtp-sink`` of its own, in the same window and
  from the same harness loop. That sink does nothing but answer, so its worst round
  trips are what this machine (2 shared cores, the harness's own loop, the scheduler)
  adds to any round trip: a gateway NOOP figure near the control's is noise, not a
  gateway stall. (Not the gateway's next hop: that sink is busy taking the big message
  itself, and its NOOPs stalled for 1.1 s in a trial run.)

Memory: peak RSS growth = VmHWM after the big message - VmRSS before it (the gateway
warmed up with small mails first), compared with the message size.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .loadgen import ping, trickle
from .procs import postfix_tool, smtp_source, start_smtp_sink, tree_memory_kb
from .systems import GatewaySettings, start_gateway

__all__ = ["BigMailResult", "big_mail_phase"]


@dataclass
class BigMailResult:
    """What the big message did to the gateway and to the other sessions."""

    size_mb: float
    reply_ok: bool
    elapsed_s: float
    rss_before_mb: float
    peak_rss_mb: float
    noop_median_ms: float
    noop_max_ms: float
    noop_during: int
    noop_p99_ms: float  # during the big message
    noop_over_50: int  # round trips during it more than 50 ms above the usual one
    trickle_median_ms: float
    trickle_max_ms: float
    trickle_during: int
    trickle_failed: int
    # The same four NOOP figures for the control pinger (smtp-sink directly).
    control_median_ms: float = float("nan")
    control_max_ms: float = float("nan")
    control_p99_ms: float = float("nan")
    control_over_50: int = 0

    @property
    def growth_ratio(self) -> float:
        """Peak RSS growth over the message size."""
        return (self.peak_rss_mb - self.rss_before_mb) / self.size_mb

    @property
    def stall_ms(self) -> float:
        """The worst NOOP round trip during the big message, minus the usual one."""
        return self.noop_max_ms - self.noop_median_ms

    def describe(self) -> str:
        """One paragraph for the report."""
        return (
            f"one {self.size_mb:.0f} MB message: relayed {'OK' if self.reply_ok else 'FAILED'}"
            f" in {self.elapsed_s:.1f} s; peak RSS {self.rss_before_mb:.0f} -> "
            f"{self.peak_rss_mb:.0f} MB (growth {self.growth_ratio:.1f} x the message);"
            f" NOOP round trip median {self.noop_median_ms:.1f} ms, worst during it"
            f" {self.noop_max_ms:.1f} ms (stall ~{self.stall_ms:.0f} ms; {self.noop_during}"
            f" round trips during it, p99 {self.noop_p99_ms:.0f} ms, {self.noop_over_50} over"
            f" 50 ms above the median); control NOOPs to an idle smtp-sink in the same window:"
            f" median {self.control_median_ms:.1f} ms, worst {self.control_max_ms:.1f} ms,"
            f" p99 {self.control_p99_ms:.0f} ms, {self.control_over_50} over 50 ms above the"
            f" median (the machine's own noise); 4 KB mails"
            f" during it: {self.trickle_during} (failed {self.trickle_failed}), latency"
            f" median {self.trickle_median_ms:.0f} ms, max {self.trickle_max_ms:.0f} ms"
        )


class _Seen(NamedTuple):
    ok: bool
    elapsed: float
    pings: list[tuple[float, float]]
    control: list[tuple[float, float]]
    mails: list[tuple[float, float, int]]
    started: float


async def _drive(port: int, control_port: int, size_mb: float) -> _Seen:
    stopped = False

    def stop() -> bool:
        return stopped

    pinger = asyncio.create_task(ping(port, stop))
    control = asyncio.create_task(ping(control_port, stop))
    mails = asyncio.create_task(trickle(port, stop, tag=f"big{time.time():.0f}"))
    await asyncio.sleep(2.0)  # the usual round trips, before the big one
    started = time.perf_counter()
    body = int(size_mb * 1024 * 1024)
    source = await asyncio.create_subprocess_exec(
        postfix_tool("smtp-source"), "-s", "1", "-m", "1", "-l", str(body),
        "-f", "sender@bench.example", "-t", "triage@example.com", "-M", "bench.example",
        f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await source.communicate()
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.5)
    stopped = True
    samples = await pinger
    controls = await control
    sent = await mails
    return _Seen(source.returncode == 0 and not err, elapsed, samples, controls, sent, started)


def big_mail_phase(
    emulator_url: str, settings: GatewaySettings, size_mb: float, log_dir: Path
) -> BigMailResult:
    """Relay one ``size_mb`` message through a fresh gateway while others keep flowing."""
    sink, sink_port = start_smtp_sink(log_dir)
    idle, idle_port = start_smtp_sink(log_dir)
    try:
        proc, port = start_gateway(sink_port, emulator_url, settings, log_dir, "gateway-big")
        try:
            smtp_source(port, messages=50, sessions=5, size=4096)  # warm-up
            rss_before = tree_memory_kb(proc.pid, "VmRSS") / 1024
            ok, elapsed, pings, controls, mails, started = asyncio.run(
                _drive(port, idle_port, size_mb)
            )
            peak = tree_memory_kb(proc.pid, "VmHWM") / 1024
        finally:
            proc.stop()
    finally:
        idle.stop()
        sink.stop()
    before = [rtt * 1000 for t, rtt in pings if t < started]
    during = [rtt * 1000 for t, rtt in pings if t >= started]
    control_before = [rtt * 1000 for t, rtt in controls if t < started]
    control_during = [rtt * 1000 for t, rtt in controls if t >= started]
    mail_before = [lat * 1000 for t, lat, _ in mails if t < started]
    mail_during = [(lat * 1000, code) for t, lat, code in mails if t >= started]
    return BigMailResult(
        size_mb=size_mb,
        reply_ok=ok,
        elapsed_s=elapsed,
        rss_before_mb=rss_before,
        peak_rss_mb=peak,
        noop_median_ms=statistics.median(before) if before else float("nan"),
        noop_max_ms=max(during, default=float("nan")),
        noop_during=len(during),
        noop_p99_ms=_p99(during),
        noop_over_50=_over_50(before, during),
        trickle_median_ms=statistics.median(mail_before) if mail_before else float("nan"),
        trickle_max_ms=max((lat for lat, _ in mail_during), default=float("nan")),
        trickle_during=len(mail_during),
        trickle_failed=sum(1 for _, code in mail_during if not 200 <= code < 300),
        control_median_ms=statistics.median(control_before) if control_before else float("nan"),
        control_max_ms=max(control_during, default=float("nan")),
        control_p99_ms=_p99(control_during),
        control_over_50=_over_50(control_before, control_during),
    )


def _over_50(before: list[float], during: list[float]) -> int:
    # Round trips during the big message more than 50 ms above the usual one.
    if not before:
        return 0
    usual = statistics.median(before)
    return sum(1 for rtt in during if rtt > usual + 50)


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
