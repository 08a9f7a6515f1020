"""The issue-5 throughput benchmark, small by default (run with ``-m perf -s``).

Scale it up to the issue's sizes with environment variables, e.g.::

    CM_BENCH_MESSAGES=5000 CM_BENCH_SESSIONS=50 CM_BENCH_RUNS=3 CM_BENCH_BIG_MB=25 \\
        .venv/bin/pytest tests/perf/test_throughput_bench.py -m perf -s

``CM_BENCH_DEFAULTS=1`` runs the gateway with no tuning key beside the old defaults
(issue 20). (``python -m tests.perf.throughput --help`` runs the same thing without
pytest.) The
figures are printed; the assertions are the ones that hold on any machine, however slow
or busy: every message delivered, none billed twice, batching at work.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.real_parts import missing_part

from .procs import postfix_tool
from .systems import GatewaySettings
from .throughput import BASELINE, HOLD, Options, render, run_benchmark

pytestmark = pytest.mark.perf


def _env(name: str, default: float) -> float:
    return float(os.environ.get(f"CM_BENCH_{name}", default))


def _options() -> Options:
    workers = os.environ.get("CM_BENCH_WORKERS", "1")
    return Options(
        messages=int(_env("MESSAGES", 200)),
        sessions=int(_env("SESSIONS", 50)),
        size=int(_env("SIZE", 4096)),
        latency_ms=_env("LATENCY_MS", 100),
        runs=int(_env("RUNS", 1)),
        tempfail=_env("TEMPFAIL", 0.2),
        billing_messages=int(_env("BILLING_MESSAGES", 100)),
        half_load_messages=int(_env("HALF_LOAD_MESSAGES", 100)),
        workers=tuple(int(w) for w in workers.split(",")),
        big_mb=_env("BIG_MB", 5),
        # CM_BENCH_DEFAULTS=1: the gateway with no tuning key, beside the old defaults.
        defaults=bool(_env("DEFAULTS", 0)),
        before=bool(_env("DEFAULTS", 0)),
        gateway=GatewaySettings(
            max_batch=int(_env("MAX_BATCH", 64)),
            max_wait_ms=_env("MAX_WAIT_MS", 20),
            max_in_flight=int(_env("MAX_IN_FLIGHT", 4)),
            target_batch=int(_env("TARGET_BATCH", 0)),
        ),
    )


@pytest.fixture(autouse=True)
def _postfix_tools() -> None:
    try:
        postfix_tool("smtp-source")
        postfix_tool("smtp-sink")
    except FileNotFoundError as exc:
        missing_part(str(exc))


def test_gateway_and_baseline_relay_every_message_and_the_gateway_bills_each_once() -> None:
    """One benchmark run: figures printed; every message delivered by both systems, one
    document billed per distinct message (retries after a tempfail included), fewer API
    requests than messages, and the big message relayed."""
    opts = _options()
    report = run_benchmark(opts, out=sys.stdout)
    print("\n" + render(report))
    for run in report.runs:
        for figures in run:
            assert figures.failed == 0, figures
            if figures.name not in (BASELINE, HOLD):
                assert figures.billed_per_msg == pytest.approx(1.0), figures
                assert figures.api_per_msg < 0.5, figures
    if opts.tempfail > 0 and opts.billing_messages:  # every gateway system had its phase
        assert set(report.billing) == {n for n in report.names() if n not in (BASELINE, HOLD)}
    for billing in (b for phases in report.billing.values() for b in phases):
        assert billing["delivered"] == billing["distinct"], billing
        assert billing["tempfails"] > 0, billing  # the retry path was exercised
        assert billing["billed_per_distinct"] == pytest.approx(1.0), billing
    if report.big is not None:
        assert report.big.reply_ok, report.big.describe()
