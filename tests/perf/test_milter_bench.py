"""Postfix alone / + the after-queue filter / + the milter, under one load (``-m perf -s``).

Scale it with environment variables, e.g.::

    CM_BENCH_MESSAGES=2000 .venv/bin/pytest tests/perf/test_milter_bench.py -m perf -s

(``python -m tests.perf.milter_bench --help`` runs the same without pytest.) Needs root
and Debian's postfix (a private Postfix per system). The assertions hold on any machine:
every message delivered (smtp-source succeeded and Postfix's queue emptied), every
message classified once by the gateway systems, in batches.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.integration.postfix_harness import postfix_available

from .milter_bench import ALONE, render, run

pytestmark = pytest.mark.perf


def test_postfix_alone_after_queue_and_milter_under_the_same_load() -> None:
    reason = postfix_available()
    if reason:
        pytest.skip(reason)
    messages = int(os.environ.get("CM_BENCH_MESSAGES", 500))
    sessions = int(os.environ.get("CM_BENCH_SESSIONS", 50))
    size = int(os.environ.get("CM_BENCH_SIZE", 4096))
    latency = float(os.environ.get("CM_BENCH_LATENCY_MS", 100))
    results = run(
        messages=messages,
        sessions=sessions,
        size=size,
        latency_ms=latency,
        out=lambda line: print(line, file=sys.stdout),
    )
    print("\n" + render(results, sessions=sessions, size=size, latency_ms=latency))
    for figures in results:
        if figures.name == ALONE:
            continue
        assert figures.classified == messages, figures
        assert figures.api_requests < messages, figures  # batched
