"""The benchmark's report: medians, and each run's ratio to its own baseline."""

from __future__ import annotations

from tests.perf.throughput import BASELINE, Options, Report, SystemFigures, render


def figures(name: str, msgs_s: float) -> SystemFigures:
    return SystemFigures(
        name=name, msgs_s=msgs_s, cpu_ms_per_msg=1.0, api_per_msg=0.04, billed_per_msg=1.0,
        half_rate=msgs_s / 2, p50_ms=10.0, p99_ms=20.0, peak_rss_mb=30.0, direct_p99_ms=2.0,
    )  # fmt: skip


def test_each_run_is_divided_by_its_own_baseline_and_the_verdict_stays_on_medians() -> None:
    report = Report(options=Options())
    for base, gw in [(100.0, 160.0), (200.0, 220.0), (120.0, 190.0)]:
        report.runs.append([figures(BASELINE, base), figures("gateway", gw)])
    assert report.run_ratios("gateway") == [1.6, 1.1, 190.0 / 120.0]
    text = render(report)
    # Medians 190 / 120 = 1.58: met; the per-run line shows 1.60 / 1.10 / 1.58.
    assert "| throughput >= 1.5 x baseline | 1.58 x met |" in text
    assert "gateway: x its run's baseline 1.60 / 1.10 / 1.58 (median 1.58)" in text
