"""The classifier's circuit breaker, through SMTP, against the HTTP emulator failing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.classify import circuit_breaker, make_classifier
from gateway.classify._stack import build_classifier_stack
from gateway.config import Config
from gateway.context import Classifier
from gateway.errors import CircuitOpenError, ClassifierError
from gateway.mail import build_document, parse_message
from gateway.metrics import GatewayMetrics
from gateway.predictions import PredictionBatch
from gateway.testing import EmulatorHandle

from .ops_support import Gateway, emulator_classifier, header, numbered_mail, running_gateway
from .pipeline_support import make_config

pytestmark = pytest.mark.emulator(
    faults={"fail_rate": 1.0, "fail_status": "503", "latency_ms": 0.0},
    reset=True,
    token_env="REINFER_TOKEN",
)

STATE = 'cm_gateway_circuit_state{classifier="live"}'


def transitions(state: str) -> str:
    return f'cm_gateway_circuit_transitions_total{{classifier="live",state="{state}"}}'


# A call failing with 503 until its deadline ends as either, depending on which deadline
# (the client's or the pipeline's backstop) fires first on a loaded machine.
FAILED = ("unclassified; reason=server-error", "unclassified; reason=timeout")
OPEN = "unclassified; reason=circuit-open"


def _statuses(gw: Gateway) -> list[str]:
    out = []
    for received in gw.received:
        status = header(received.content, "X-CM-Status") or ""
        out.append("failed" if status in FAILED else status)
    return out


async def test_repeated_failures_open_the_circuit_and_later_mail_is_not_sent_to_the_api(
    tmp_path: Path, emu: EmulatorHandle
):
    """After N failed calls, mail is delivered with reason=circuit-open and the API sees
    no further request during the cool-down."""
    classifier = emulator_classifier(emu, circuit_failures=2, circuit_cooldown=600)
    with capture_logs() as logs:
        async with running_gateway(tmp_path, classifier=classifier) as gw:
            for n in (1, 2):
                assert (await gw.send(numbered_mail(n)))[0] == 250
            await gw.wait_metric(STATE, 1)
            requests_when_opened = emu.stats()["requests"]
            for n in (3, 4):
                assert (await gw.send(numbered_mail(n)))[0] == 250
            assert emu.stats()["requests"] == requests_when_opened
            assert gw.metric(STATE) == 1
            assert gw.metric(transitions("open")) == 1
            assert gw.metric('cm_gateway_api_errors_total{kind="circuit-open"}') == 2
            api_requests = gw.metric("cm_gateway_api_requests_total")
    assert _statuses(gw) == ["failed", "failed", OPEN, OPEN]
    # Refused calls never left the process: they are not API requests.
    assert api_requests == 2
    opened = [e for e in logs if e["event"] == "circuit_opened"]
    assert len(opened) == 1
    assert opened[0]["log_level"] == "warning"
    assert opened[0]["last_error"] in ("server-error", "timeout")


async def test_circuit_open_with_on_error_defer_answers_451_without_calling_the_api(
    tmp_path: Path, emu: EmulatorHandle
):
    """With on_error = defer an open circuit answers 451 4.4.3 at once, no API call."""
    classifier = emulator_classifier(
        emu, circuit_failures=1, circuit_cooldown=600, on_error="defer"
    )
    with capture_logs() as logs:
        async with running_gateway(tmp_path, classifier=classifier) as gw:
            code, _ = await gw.send(numbered_mail(1))
            assert code == 451
            await gw.wait_metric(STATE, 1)
            requests = emu.stats()["requests"]
            code, text = await gw.send(numbered_mail(2))
            assert emu.stats()["requests"] == requests
    assert code == 451
    assert text.startswith("4.4.3")
    lines = [e for e in logs if e["event"] == "message"]
    assert lines[0]["classifier_error"] in ("server-error", "timeout")
    assert lines[1]["classifier_error"] == "circuit-open"
    assert gw.received == []


async def test_after_the_cooldown_one_probe_goes_out_and_success_closes_the_circuit(
    tmp_path: Path, emu: EmulatorHandle
):
    """Cool-down over, faults cleared: one probe call, then mail is classified again."""
    now = [0.0]

    def stack(config: Config, metrics: GatewayMetrics) -> Classifier:
        # The stack build_processor makes, on a clock the test moves (no sleeping).
        inner = circuit_breaker(config, make_classifier(config), metrics, clock=lambda: now[0])
        return build_classifier_stack(config, inner, metrics)

    classifier = emulator_classifier(emu, circuit_failures=1, circuit_cooldown=30)
    async with running_gateway(tmp_path, classifier=classifier, stack=stack) as gw:
        await gw.send(numbered_mail(1))
        await gw.wait_metric(STATE, 1)
        emu.set_faults(fail_rate=0.0)
        now[0] = 29.0
        await gw.send(numbered_mail(2))  # still cooling down: refused, not sent
        before = emu.stats()["requests"]
        now[0] = 31.0
        await gw.send(numbered_mail(3))
        after_probe = emu.stats()["requests"]
        await gw.send(numbered_mail(4))
        assert gw.metric(STATE) == 0
        for state in ("open", "half-open", "closed"):
            assert gw.metric(transitions(state)) == 1
    assert after_probe == before + 1
    assert emu.stats()["requests"] == before + 2
    assert _statuses(gw) == ["failed", OPEN, "classified", "classified"]


async def test_a_failed_probe_opens_the_circuit_for_another_cooldown(
    tmp_path: Path, emu: EmulatorHandle
):
    """Half-open, the probe fails: open again, and the next message is refused at once."""
    now = [0.0]

    def stack(config: Config, metrics: GatewayMetrics) -> Classifier:
        inner = circuit_breaker(config, make_classifier(config), metrics, clock=lambda: now[0])
        return build_classifier_stack(config, inner, metrics)

    classifier = emulator_classifier(emu, circuit_failures=1, circuit_cooldown=30)
    async with running_gateway(tmp_path, classifier=classifier, stack=stack) as gw:
        await gw.send(numbered_mail(1))
        await gw.wait_metric(STATE, 1)
        now[0] = 31.0
        await gw.send(numbered_mail(2))  # the probe, failing
        await gw.wait_metric(transitions("open"), 2)
        requests = emu.stats()["requests"]
        now[0] = 60.0  # 29 s into the second cool-down
        await gw.send(numbered_mail(3))
        assert emu.stats()["requests"] == requests
        assert gw.metric(STATE) == 1
        assert gw.metric(transitions("open")) == 2
    assert _statuses(gw) == ["failed", "failed", OPEN]


async def test_a_failed_batch_counts_as_one_failure_however_many_messages_it_carried(
    tmp_path: Path, emu: EmulatorHandle
):
    """Three concurrent messages share one failing request: a threshold of 2 stays closed."""
    classifier = emulator_classifier(
        emu,
        circuit_failures=2,
        circuit_cooldown=600,
        max_wait_ms=500,
        send_when_idle=False,
        target_batch=0,
    )
    async with running_gateway(tmp_path, classifier=classifier) as gw:
        replies = await asyncio.gather(*(gw.send(numbered_mail(n)) for n in (1, 2, 3)))
        assert [code for code, _ in replies] == [250, 250, 250]
        assert gw.metric("cm_gateway_batch_size_count") == 1
        assert gw.metric(STATE) == 0
        assert gw.metric(transitions("open")) == 0


async def test_dedup_still_answers_a_repeated_message_while_the_circuit_is_open(
    tmp_path: Path, emu: EmulatorHandle
):
    """A message classified before the outage is classified again from the cache."""
    emu.set_faults(fail_rate=0.0)
    classifier = emulator_classifier(emu, circuit_failures=1, circuit_cooldown=600)
    async with running_gateway(tmp_path, classifier=classifier) as gw:
        await gw.send(numbered_mail(1))
        emu.set_faults(fail_rate=1.0)
        await gw.send(numbered_mail(2))
        await gw.wait_metric(STATE, 1)
        await gw.send(numbered_mail(1))
    assert _statuses(gw) == ["classified", "failed", "classified"]


async def test_half_open_lets_one_probe_through_and_refuses_the_calls_beside_it(
    tmp_path: Path, emu: EmulatorHandle
):
    """Two calls at once after the cool-down: one probe reaches the API, the other fails
    at once with circuit-open; the probe's success closes the circuit."""
    now = [0.0]
    config = make_config(
        tmp_path,
        downstream="maildir://m",
        classifier=emulator_classifier(emu, circuit_failures=1, circuit_cooldown=30),
    )
    breaker = circuit_breaker(config, make_classifier(config), clock=lambda: now[0])
    raw = numbered_mail(1)
    document = build_document(parse_message(raw), raw, user_properties={})
    try:
        with pytest.raises(ClassifierError):
            await breaker.predict_raw_emails([document])
        state_after_failure = breaker.state
        emu.set_faults(fail_rate=0.0, latency_ms=500)
        before = emu.stats()["requests"]
        now[0] = 31.0
        results = await asyncio.gather(
            breaker.predict_raw_emails([document]),
            breaker.predict_raw_emails([document]),
            return_exceptions=True,
        )
    finally:
        await breaker.aclose()
    assert state_after_failure == "open"
    assert isinstance(results[0], PredictionBatch)
    assert isinstance(results[1], CircuitOpenError)
    assert emu.stats()["requests"] == before + 1
    assert breaker.state == "closed"
