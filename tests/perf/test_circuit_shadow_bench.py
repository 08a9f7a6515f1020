"""Reply time per message, through SMTP, against the HTTP emulator (medians of several
messages, ratios against a baseline measured in the same run):

- a failing API (503) with the circuit breaker off vs. with the circuit open;
- no shadow model vs. a shadow model sampling every message and 2 s slower than live.

    .venv/bin/pytest tests/perf/test_circuit_shadow_bench.py -m perf -s
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import EmulatorHandle
from tests.integration.ops_support import emulator_classifier, numbered_mail, running_gateway

pytestmark = [pytest.mark.perf, pytest.mark.emulator(per_test=True, token_env="REINFER_TOKEN")]

MESSAGES = 7


async def _median_reply_seconds(
    tmp_path: Path,
    first: int,
    *,
    classifier: dict[str, Any],
    shadow: dict[str, Any] | None = None,
    warmup: int = 0,
) -> float:
    """Median seconds from the start of an SMTP send to the reply to DATA."""
    times = []
    async with running_gateway(tmp_path, classifier=classifier, shadow=shadow or {}) as gw:
        for n in range(first, first + warmup):
            await gw.send(numbered_mail(n))
        for n in range(first + warmup, first + warmup + MESSAGES):
            started = time.perf_counter()
            code, _ = await gw.send(numbered_mail(n))
            times.append(time.perf_counter() - started)
            assert code == 250
    return statistics.median(times)


async def test_an_open_circuit_answers_faster_than_a_failing_api(
    tmp_path: Path, emu: EmulatorHandle
):
    """With the API down, an open circuit answers without waiting out classifier.timeout."""
    emu.set_faults(fail_rate=1.0, fail_status="503")
    failing = await _median_reply_seconds(
        tmp_path, 0, classifier=emulator_classifier(emu, circuit_failures=0)
    )
    tripped = await _median_reply_seconds(
        tmp_path,
        100,
        warmup=2,
        classifier=emulator_classifier(emu, circuit_failures=2, circuit_cooldown=600),
    )
    print(
        f"\ncircuit: API failing, breaker off {failing * 1000:.0f} ms/message (median of"
        f" {MESSAGES}); circuit open {tripped * 1000:.0f} ms/message;"
        f" ratio {tripped / failing:.3f}"
    )
    assert tripped < failing / 2


async def test_a_slow_shadow_model_does_not_slow_the_replies(tmp_path: Path, emu: EmulatorHandle):
    """Shadow sampling every message, 2 s slower than live: replies as fast as without."""
    emu.set_faults(version_latency_ms={"staging": 2000})
    classifier = emulator_classifier(emu, timeout=10.0)
    alone = await _median_reply_seconds(tmp_path, 0, classifier=classifier)
    shadowed = await _median_reply_seconds(
        tmp_path,
        100,
        classifier=classifier,
        shadow={"model_version": "staging", "sample": 1.0, "max_in_flight": 64},
    )
    print(
        f"\nshadow: live only {alone * 1000:.0f} ms/message (median of {MESSAGES});"
        f" with a shadow 2 s slower on every message {shadowed * 1000:.0f} ms/message;"
        f" ratio {shadowed / alone:.2f}"
    )
    assert shadowed < alone + 1.0  # far below the shadow's 2 s
