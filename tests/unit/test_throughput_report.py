"""The benchmark's report: medians, and each run's ratio to its own baseline."""

from __future__ import annotations

import dataclasses

from tests.perf.systems import _gateway_config
from tests.perf.throughput import (
    BASELINE,
    BEFORE,
    HOLD,
    Options,
    Report,
    SystemFigures,
    gateway_systems,
    render,
)


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


def test_a_throughput_target_over_sessions_per_latency_is_called_unreachable() -> None:
    """50 sessions and 100 ms: at most 500 msgs/s through any classifying relay; against a
    1,200 msgs/s baseline the 1.5 x target is out of reach, and the report says so."""
    report = Report(options=Options(sessions=50, latency_ms=100.0))
    report.runs.append([figures(BASELINE, 1200.0), figures(HOLD, 480.0), figures("gateway", 408.0)])
    text = render(report)
    assert "| target | gateway |" in text  # neither relay is a column of the targets
    assert (
        "| throughput >= 1.5 x baseline | 0.34 x MISSED (unreachable: 50 sessions / 100 ms"
        " = 500 msgs/s at most, 0.42 x) |" in text
    )
    assert "gateway: 0.85 x the hold relay's msgs/s" in text
    assert "| p99 added at half peak <= 150 ms | 18 ms met |" in text


def test_a_target_missed_where_sessions_per_latency_allow_it_is_only_missed() -> None:
    report = Report(options=Options(sessions=500, latency_ms=100.0))
    report.runs.append(
        [figures(BASELINE, 1000.0), figures(HOLD, 900.0), figures("gateway", 1400.0)]
    )
    assert "| throughput >= 1.5 x baseline | 1.40 x MISSED |" in render(report)


def test_billing_is_reported_for_each_gateway_system_as_the_median_of_its_runs() -> None:
    report = Report(options=Options())
    report.runs.append([figures(BASELINE, 1000.0), figures("gateway-w2", 1600.0)])
    phase = {"distinct": 100.0, "delivered": 100.0, "tempfails": 20.0}
    report.billing["gateway"] = [{**phase, "billed_per_distinct": b} for b in (1.0, 1.02, 1.0)]
    report.billing["gateway-w2"] = [{**phase, "billed_per_distinct": 1.04}]
    text = render(report)
    assert "gateway: billed per distinct message with 20% first attempts tempfailed: 1.00" in text
    assert (
        "gateway-w2: billed per distinct message with 20% first attempts tempfailed: 1.04" in text
    )


def test_the_issue_20_rows_judge_the_defaults_against_the_hold_relay_and_idle_latency() -> None:
    report = Report(options=Options(sessions=50, latency_ms=100.0, defaults=True, before=True))
    gw = dataclasses.replace(figures("gateway", 300.0), idle_ms=108.0, direct_idle_ms=1.0)
    gw.units_per_msg = 1.0
    old = dataclasses.replace(figures(BEFORE, 250.0), idle_ms=125.0, direct_idle_ms=1.0)
    old.units_per_msg = 1.0
    report.runs.append([figures(BASELINE, 1000.0), figures(HOLD, 320.0), gw, old])
    text = render(report)
    assert "gateway: defaults (no tuning key; max_connections 1000)" in text
    assert "| >= 0.9 x the hold relay | 0.94 x met | 0.78 x MISSED |" in text
    assert "| one message at idle: added <= 110 ms | 107 ms met | 124 ms MISSED |" in text
    assert "| <= 1.00 AI units per distinct message | 1.00 met | 1.00 met |" in text


def test_defaults_mode_writes_no_tuning_key_and_runs_the_old_defaults_beside() -> None:
    opts = Options(defaults=True, before=True, workers=("auto", 1))
    systems = gateway_systems(opts)
    # The old defaults ran one worker: "auto" and 1 share the one "before" system.
    assert [name for name, _ in systems] == ["gateway-auto", "gateway", BEFORE]
    config = _gateway_config(2525, 2526, "http://127.0.0.1:1", systems[0][1])
    for key in ("max_wait_ms", "target_batch", "max_batch", "pool_size", "workers", "timeout"):
        assert key not in config
    # 1 is no longer the default: it is written.
    assert "workers = 1\n" in _gateway_config(2525, 2526, "http://127.0.0.1:1", systems[1][1])
    old = _gateway_config(2525, 2526, "http://127.0.0.1:1", systems[2][1])
    assert "max_wait_ms = 20" in old and "target_batch = 0" in old and "workers = 1\n" in old
