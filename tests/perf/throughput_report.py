"""The throughput benchmark's report: a Markdown table of medians, the targets of
issues 5 and 20 (met / MISSED), each run's ratios and the billing phases."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from .bench_model import BASELINE, BEFORE, HOLD, Options, Report, SystemFigures

__all__ = ["render", "row"]


def row(f: SystemFigures) -> str:
    return (
        f"{f.name}: {f.msgs_s:.1f} msgs/s, {f.cpu_ms_per_msg:.1f} CPU ms/msg,"
        f" {f.api_per_msg:.3f} API req/msg,"
        f" {f.billed_per_msg:.2f} billed/msg, at {f.half_rate:.0f}/s p50 {f.p50_ms:.0f} ms"
        f" p99 {f.p99_ms:.0f} ms (added {f.added_p99_ms:.0f} ms), peak RSS"
        f" {f.peak_rss_mb:.0f} MB, failed {f.failed}, sink alone p99 {f.direct_p99_ms:.0f} ms,"
        f" documents sent/msg {f.sent_per_msg:.2f}, AI units/msg {f.units_per_msg:.2f},"
        f" one message at idle {f.idle_ms:.0f} ms (added {f.idle_added_ms:.0f} ms)"
    )


def render(report: Report) -> str:
    """The report as a Markdown table (medians over runs) plus the ratios and targets."""
    o = report.options
    lines = [
        f"{o.messages} msgs x {o.size} B, {o.sessions} sessions, emulator latency"
        f" {o.latency_ms:g} ms, median of {len(report.runs)} run(s); {_settings(o)}",
        "",
        "| system | msgs/s | x baseline | CPU ms/msg | p50 / p99 ms at half peak | p99 added"
        " ms | API req/msg | billed/msg | sent/msg | AI units/msg | idle added ms |"
        " peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = report.median(BASELINE, "msgs_s")
    for name in report.names():
        m = {a: report.median(name, a) for a in [*_NUMERIC, "added_p99_ms", "idle_added_ms"]}
        added = f"{m['added_p99_ms']:.0f}"
        lines.append(
            f"| {name} | {m['msgs_s']:.1f} | {m['msgs_s'] / base:.2f} | {m['cpu_ms_per_msg']:.1f}"
            f" | {m['p50_ms']:.0f} / {m['p99_ms']:.0f} (at {m['half_rate']:.1f}/s) | {added}"
            f" | {m['api_per_msg']:.3f} | {m['billed_per_msg']:.2f} | {m['sent_per_msg']:.2f}"
            f" | {m['units_per_msg']:.2f} | {m['idle_added_ms']:.0f} | {m['peak_rss_mb']:.0f} |"
        )
    lines += ["", *_targets(report, base), ""]
    lines += _tail(report)
    return "\n".join(lines)


def _settings(o: Options) -> str:
    if o.defaults:
        before = f"; {BEFORE}: the defaults before issue 20" if o.before else ""
        return f"gateway: defaults (no tuning key; max_connections 1000){before}"
    return (
        f"max_batch"
        f" {o.gateway.max_batch}, max_wait_ms {o.gateway.max_wait_ms:g}, max_in_flight"
        f" {o.gateway.max_in_flight}, send_when_idle {o.gateway.send_when_idle},"
        f" min_batch {o.gateway.min_batch}, target_batch {o.gateway.target_batch},"
        f" shared_batcher {o.gateway.shared_batcher}, downstream"
        f" pool_size {o.gateway.pool_size}"
    )


def _tail(report: Report) -> list[str]:
    lines: list[str] = []
    # The table's ratio is of medians; the machine drifts between runs, so each run's
    # ratio to its own baseline is shown too (the verdict above stays on the medians).
    for name in report.names():
        if name != BASELINE and (ratios := report.run_ratios(name)):
            each = " / ".join(f"{r:.2f}" for r in ratios)
            lines.append(
                f"{name}: x its run's baseline {each} (median {statistics.median(ratios):.2f})"
            )
    held = report.median(HOLD, "msgs_s")
    if not math.isnan(held):  # the hold relay ran
        for name in _gateways(report):
            share = report.median(name, "msgs_s") / held
            lines.append(f"{name}: {share:.2f} x the hold relay's msgs/s")
    if report.billing:
        lines.append("")
    for name, phases in report.billing.items():
        per = statistics.median(b["billed_per_distinct"] for b in phases)
        tf = statistics.median(b["tempfails"] / b["distinct"] for b in phases)
        lines.append(
            f"{name}: billed per distinct message with {tf:.0%} first attempts tempfailed:"
            f" {per:.2f}"
        )
    if report.big is not None:
        lines += ["", report.big.describe()]
    return lines


def _gateways(report: Report) -> list[str]:
    return [n for n in report.names() if n not in (BASELINE, HOLD)]


_NUMERIC = [a for a, f in SystemFigures.__dataclass_fields__.items() if f.type in ("float", "int")]


def _targets(report: Report, base: float) -> list[str]:
    """Issue 5's targets, each with the measured median and met / missed."""
    o = report.options
    bound = 100 + (200.0 if o.defaults else o.gateway.max_wait_ms) + 30
    gateways = _gateways(report)
    # Each session has one message in flight, and each message waits at least the API's
    # latency: sessions / latency msgs/s at most through any relay that classifies before
    # it answers (Little's law). When that is under 1.5 x the baseline, no gateway can
    # meet the target in this setting; the hold relay shows how near a real one gets.
    ceiling = o.sessions * 1000 / o.latency_ms
    unreachable = (
        f" (unreachable: {o.sessions} sessions / {o.latency_ms:g} ms = {ceiling:.0f} msgs/s"
        f" at most, {ceiling / base:.2f} x)"
        if ceiling < 1.5 * base
        else ""
    )
    out = ["| target | " + " | ".join(gateways) + " |"]
    out.append("|---|" + "---|" * len(gateways))
    rows: list[tuple[str, str, Callable[[float], bool]]] = [
        ("throughput >= 1.5 x baseline", "msgs_s", lambda v: v >= 1.5 * base),
        ("<= 0.05 API requests per message", "api_per_msg", lambda v: v <= 0.05),
        (f"p99 added at half peak <= {bound:g} ms", "added_p99_ms", lambda v: v <= bound),
    ]
    for label, attr, ok in rows:
        cells = []
        for name in gateways:
            v = report.median(name, attr)
            shown = {"msgs_s": f"{v / base:.2f} x", "api_per_msg": f"{v:.3f}"}.get(
                attr, f"{v:.0f} ms"
            )
            why = unreachable if attr == "msgs_s" and not ok(v) else ""
            cells.append(f"{shown} {'met' if ok(v) else 'MISSED'}{why}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out + _issue20_targets(report, gateways)


def _issue20_targets(report: Report, gateways: list[str]) -> list[str]:
    """Issue 20's targets for the defaults: near the hold relay, billed once, no wait
    for a batch at idle, and a bounded p99 at half load."""
    o = report.options
    held = report.median(HOLD, "msgs_s")
    rows: list[tuple[str, Callable[[str], float], Callable[[float], bool], str]] = [
        (
            ">= 0.9 x the hold relay",
            lambda n: report.median(n, "msgs_s") / held,
            lambda v: v >= 0.9,
            "{:.2f} x",
        ),
        (
            "<= 1.00 AI units per distinct message",
            lambda n: report.median(n, "units_per_msg"),
            lambda v: v <= 1.0,
            "{:.2f}",
        ),
        (
            f"one message at idle: added <= {o.latency_ms + 10:g} ms",
            lambda n: report.median(n, "idle_added_ms"),
            lambda v: v <= o.latency_ms + 10,
            "{:.0f} ms",
        ),
        (
            f"p99 added at half peak <= {o.latency_ms + 100:g} ms",
            lambda n: report.median(n, "added_p99_ms"),
            lambda v: v <= o.latency_ms + 100,
            "{:.0f} ms",
        ),
    ]
    out = []
    for label, value, ok, fmt in rows:
        cells = []
        for name in gateways:
            v = value(name)
            cells.append(
                "n/a" if math.isnan(v) else f"{fmt.format(v)} {'met' if ok(v) else 'MISSED'}"
            )
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out
