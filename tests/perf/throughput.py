"""Throughput benchmark (issue 5): the gateway against a plain relay, in one run.

    python -m tests.perf.throughput [--messages 5000 --sessions 50 --latency-ms 100
                                     --runs 3 --tempfail 0.2 --workers 1,2 --big-mb 25]

One emulator (``--latency-ms`` per API call) serves the whole run; it first scores the
run's texts once (``Emulator.warm``: its memo of scored texts cuts its CPU per message
~3.5 x, see ``loadgen.TEXT_PERIOD``; without the warm-up the first system measured paid
for filling it). For each run and each
system (the gateway with each ``--workers`` count, the baseline relay, and the hold relay:
the baseline waiting ``--latency-ms`` before it relays each message: how near a relay
that does nothing else gets to the closed loop's bound of sessions / latency msgs/s,
which no relay that waits for a classification can pass; ``--hold off`` leaves it out):

1. peak: Postfix's ``smtp-source`` sends ``--messages`` mails of ``--size`` bytes over
   ``--sessions`` persistent sessions into ``smtp-sink``; msgs/s = messages / wall time;
   API requests and documents billed per message come from the emulator's ledger;
2. half load: our own driver (``loadgen.drive_open``) sends at half that peak rate and
   times each DATA (p50/p99): ``smtp-source`` cannot time single messages. The same
   driver then sends at that rate straight to ``smtp-sink``: "p99 added" is the system's
   p99 minus the sink's own, the delay that putting the system in the mail path adds.
   (Not minus the baseline relay's: at a faster gateway's half-peak rate the baseline
   is near its own peak, and its queueing would hide the gateway's latency.);
3. peak RSS: VmHWM of the process tree (parent and workers), read before it stops.

Then, per run and per ``--workers`` count, billing under retries: the gateway in front
of ``tempfail_sink`` (the first attempt of ``--tempfail`` of the messages gets 451),
driven by ``loadgen`` which retries 4xx like a queueing MTA: documents billed per
distinct delivered message (with several workers, a retry may reach another worker).
Once per invocation, the big message (``bigmail``). Figures are medians over runs.

``--defaults`` (issue 20) runs the gateway with no tuning key at all (only
``max_connections``, sized for the sessions), and, unless ``--before off``, the defaults
before issue 20 spelled out (``gateway-before``) in the same run. Each system also gets
one message alone at idle (five times, median): "idle added" is its DATA time minus the
sink's own. The ledger gives documents sent (failed calls included) and AI units per
message; the targets table adds issue 20's rows. The lead's command::

    python -m tests.perf.throughput --defaults --runs 3 --messages 5000 --sessions 50 \
        --latency-ms 100 --big-mb 0
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from .bench_model import BASELINE, BEFORE, HOLD, Options, Report, SystemFigures
from .bigmail import big_mail_phase
from .loadgen import TEXT_PERIOD, drive_closed, drive_open, make_message
from .procs import Proc, smtp_source, start_smtp_sink, tree_cpu_seconds, tree_memory_kb
from .systems import Emulator, GatewaySettings, start_baseline, start_gateway, start_tempfail_sink
from .throughput_report import render, row

__all__ = [
    "BASELINE",
    "BEFORE",
    "HOLD",
    "Options",
    "Report",
    "SystemFigures",
    "gateway_systems",
    "main",
    "render",
    "run_benchmark",
]


def _latency(port: int, rate: float, opts: Options, tag: str) -> tuple[float, float, int]:
    """p50, p99 (ms) and failures of DATA replies at an open-loop ``rate``."""
    # About 20 s of load, within bounds: this machine may manage only a few msgs/s.
    count = max(50, min(opts.half_load_messages, int(rate * 20)))
    mails = [make_message(tag, i, opts.size) for i in range(count)]
    result = asyncio.run(drive_open(port, mails, rate=rate, sessions=opts.sessions))
    summary = result.summary()
    return summary["p50_ms"], summary["p99_ms"], result.failed


def _idle(port: int, opts: Options, tag: str) -> float:
    """The median DATA time (ms) of one message alone at idle, five times, 0.5 s apart."""
    time.sleep(1.0)  # what the last phase left in flight ends
    mails = [make_message(tag, i, opts.size) for i in range(5)]
    result = asyncio.run(drive_open(port, mails, rate=2.0, sessions=1))
    return result.summary()["p50_ms"]


def _measure(
    name: str, proc: Proc, port: int, sink_port: int, emulator: Emulator, opts: Options, tag: str
) -> SystemFigures:
    smtp_source(port, messages=min(50, opts.messages), sessions=5, size=opts.size)  # warm-up
    emulator.reset()
    cpu = tree_cpu_seconds(proc.pid)
    elapsed = smtp_source(port, messages=opts.messages, sessions=opts.sessions, size=opts.size)
    cpu = tree_cpu_seconds(proc.pid) - cpu
    stats = emulator.stats()
    peak = opts.messages / elapsed
    p50, p99, failed = _latency(port, peak / 2, opts, tag)
    direct_p99 = _latency(sink_port, peak / 2, opts, f"{tag}d")[1]
    idle = _idle(port, opts, f"{tag}i")
    direct_idle = _idle(sink_port, opts, f"{tag}j")
    return SystemFigures(
        name=name,
        msgs_s=peak,
        cpu_ms_per_msg=cpu * 1000 / opts.messages,
        api_per_msg=stats["requests"] / opts.messages,
        billed_per_msg=stats["documents_billed"] / opts.messages,
        half_rate=peak / 2,
        p50_ms=p50,
        p99_ms=p99,
        peak_rss_mb=tree_memory_kb(proc.pid) / 1024,
        failed=failed,
        direct_p99_ms=direct_p99,
        sent_per_msg=stats["documents_sent"] / opts.messages,
        units_per_msg=stats["ai_units"] / opts.messages,
        idle_ms=idle,
        direct_idle_ms=direct_idle,
    )


def _one_system(
    name: str,
    settings: GatewaySettings | None,
    emulator: Emulator,
    opts: Options,
    log_dir: Path,
    tag: str,
) -> SystemFigures:
    """``settings`` None: the baseline relay (holding each message if ``name`` is HOLD)."""
    sink, sink_port = start_smtp_sink(log_dir)
    try:
        if settings is None:
            hold_ms = opts.latency_ms if name == HOLD else 0.0
            proc, port = start_baseline(sink_port, log_dir, hold_ms)
        else:
            proc, port = start_gateway(sink_port, emulator.base_url, settings, log_dir, name)
        try:
            return _measure(name, proc, port, sink_port, emulator, opts, tag)
        finally:
            proc.stop()
    finally:
        sink.stop()


def gateway_systems(opts: Options) -> list[tuple[str, GatewaySettings]]:
    """The gateways to measure: one per ``--workers`` count, with ``opts.gateway`` or (with
    ``--defaults``) no tuning key; with ``--before`` also the defaults before issue 20."""
    out = []
    for w in opts.workers:
        settings = dataclasses.replace(opts.gateway, workers=w, defaults=opts.defaults)
        out.append((_name(w), settings))
    if opts.defaults and opts.before:
        # Before issue 20 the default was one worker: "auto" compares with that.
        olds = {1 if w == "auto" else w: None for w in opts.workers}
        for old in olds:
            name = BEFORE if old == 1 else f"{BEFORE}-w{old}"
            out.append((name, GatewaySettings(workers=old)))
    return out


def _billing(
    emulator: Emulator,
    opts: Options,
    name: str,
    settings: GatewaySettings,
    log_dir: Path,
    tag: str,
) -> dict[str, float]:
    sink, sink_port = start_tempfail_sink(opts.tempfail, log_dir)
    try:
        proc, port = start_gateway(
            sink_port, emulator.base_url, settings, log_dir, f"{name}-billing"
        )
        try:
            emulator.reset()
            mails = [make_message(tag, i, opts.size) for i in range(opts.billing_messages)]
            result = asyncio.run(drive_closed(port, mails, sessions=opts.sessions))
            stats = emulator.stats()
        finally:
            proc.stop()
    finally:
        sink.stop()
    delivered = max(result.delivered, 1)
    return {
        "distinct": float(result.distinct),
        "delivered": float(result.delivered),
        "attempts": float(result.attempts),
        "tempfails": float(result.tempfails),
        "billed_per_distinct": stats["documents_billed"] / delivered,
        "sent_per_distinct": stats["documents_sent"] / delivered,
        "units_per_distinct": stats["ai_units"] / delivered,
        "api_per_attempt": stats["requests"] / max(result.attempts, 1),
    }


def run_benchmark(opts: Options, out: object = sys.stdout) -> Report:
    """Run every phase; print progress to ``out``; return the report."""
    log_dir = opts.log_dir or Path(tempfile.mkdtemp(prefix="cm-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    say = getattr(out, "write")  # noqa: B009 - any text stream
    report = Report(options=opts)
    emulator = Emulator(opts.latency_ms, log_dir)
    stamp = f"{int(time.time())}"
    try:
        texts = min(TEXT_PERIOD, max(opts.half_load_messages, opts.billing_messages, 50))
        emulator.warm([make_message(f"w{stamp}", i, opts.size) for i in range(texts)])
        for run in range(opts.runs):
            systems = gateway_systems(opts)
            gateways = [
                _one_system(name, s, emulator, opts, log_dir, f"g{i}{stamp}r{run}")
                for i, (name, s) in enumerate(systems)
            ]
            base = _one_system(BASELINE, None, emulator, opts, log_dir, f"b{stamp}r{run}")
            held = (
                [_one_system(HOLD, None, emulator, opts, log_dir, f"h{stamp}r{run}")]
                if opts.hold
                else []
            )
            figures = [base, *held, *gateways]
            report.runs.append(figures)
            for f in figures:
                say(f"run {run + 1}: {row(f)}\n")
            if opts.tempfail > 0 and opts.billing_messages:
                for i, (name, s) in enumerate(systems):
                    billing = _billing(emulator, opts, name, s, log_dir, f"t{i}{stamp}r{run}")
                    report.billing.setdefault(name, []).append(billing)
                    say(f"run {run + 1}: {name} billing {billing}\n")
        if opts.big_mb > 0:
            report.big = big_mail_phase(emulator.base_url, opts.gateway, opts.big_mb, log_dir)
    finally:
        emulator.close()
    say(f"logs: {log_dir}\n")
    return report


def _name(workers: int | str) -> str:
    return "gateway" if workers == 1 else f"gateway-{'' if workers == 'auto' else 'w'}{workers}"


def _workers(text: str) -> tuple[int | str, ...]:
    return tuple(w if w == "auto" else int(w) for w in text.split(","))


def _parse(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description="cm-gateway throughput benchmark (issues 5, 20)")
    d = Options()
    g = GatewaySettings()
    p.add_argument("--messages", type=int, default=d.messages)
    p.add_argument("--sessions", type=int, default=d.sessions)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--latency-ms", type=float, default=d.latency_ms)
    p.add_argument("--runs", type=int, default=d.runs)
    p.add_argument("--tempfail", type=float, default=d.tempfail)
    p.add_argument("--billing-messages", type=int, default=d.billing_messages)
    p.add_argument("--half-load-messages", type=int, default=d.half_load_messages)
    p.add_argument(
        "--workers",
        default=None,
        help="comma-separated, e.g. 1,2 or auto,1; default: auto with --defaults (no workers"
        " key), else 1",
    )
    p.add_argument("--big-mb", type=float, default=d.big_mb, help="0: skip")
    p.add_argument(
        "--hold",
        choices=("on", "off"),
        default="on",
        help="the hold relay (--latency-ms per message, nothing else)",
    )
    p.add_argument("--max-batch", type=int, default=g.max_batch)
    p.add_argument("--max-wait-ms", type=float, default=g.max_wait_ms)
    p.add_argument("--max-in-flight", type=int, default=g.max_in_flight)
    p.add_argument("--pool-size", type=int, default=g.pool_size)
    p.add_argument(
        "--send-when-idle", choices=("on", "off"), default="on" if g.send_when_idle else "off"
    )
    p.add_argument("--min-batch", type=int, default=g.min_batch)
    p.add_argument(
        "--target-batch", default=str(g.target_batch), help="auto, 0 (off: group commit) or N"
    )
    p.add_argument(
        "--shared-batcher", choices=("on", "off"), default="on" if g.shared_batcher else "off"
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-dir", type=Path, default=None)
    p.add_argument(
        "--defaults",
        action="store_true",
        help="the gateway with no tuning key at all (the batcher, pool and max_wait_ms"
        " flags above are ignored; --workers still applies)",
    )
    p.add_argument(
        "--before",
        choices=("on", "off"),
        default="on",
        help="with --defaults: also the defaults before issue 20 (gateway-before)",
    )
    a = p.parse_args(argv)
    settings = GatewaySettings(
        max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, max_in_flight=a.max_in_flight,
        log_level=a.log_level, pool_size=a.pool_size, send_when_idle=a.send_when_idle == "on",
        shared_batcher=a.shared_batcher == "on", min_batch=a.min_batch,
        target_batch=a.target_batch if a.target_batch == "auto" else int(a.target_batch),
    )  # fmt: skip
    return Options(
        messages=a.messages, sessions=a.sessions, size=a.size, latency_ms=a.latency_ms,
        runs=a.runs, tempfail=a.tempfail, billing_messages=a.billing_messages,
        half_load_messages=a.half_load_messages,
        workers=_workers(a.workers or ("auto" if a.defaults else "1")), big_mb=a.big_mb,
        hold=a.hold == "on", gateway=settings, log_dir=a.log_dir, defaults=a.defaults,
        before=a.before == "on",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    report = run_benchmark(_parse(argv))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
