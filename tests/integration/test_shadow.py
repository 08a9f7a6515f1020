"""The shadow model through SMTP: sampled mail is classified again by ``[shadow]
model_version`` in the background, the decision diff is logged and counted, and the mail
never waits for it nor suffers from it."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import build_config
from gateway.errors import ConfigError
from gateway.mail import build_document, parse_message
from gateway.pipeline._shadow import ShadowRunner, is_sampled
from gateway.testing import EmulatorHandle

from .ops_support import emulator_classifier, header, numbered_mail, running_gateway
from .pipeline_support import RULES

pytestmark = pytest.mark.emulator(
    faults={"fail_rate": 0.0, "latency_ms": 0.0, "version_latency_ms": {}},
    reset=True,
    token_env="REINFER_TOKEN",
)

# The emulator's staging model is slightly more confident: one "refund" keyword scores
# about 0.63 on live and 0.66 on staging, so this rule fires with staging only.
SHADOW_RULES = (
    RULES
    + """
  - name: refunds-checked
    when: { label: "Finance > Refund", min_probability: 0.64 }
    actions:
      - add_header: { X-Refund: "yes" }
"""
)
REFUND_BODY = "Please send me a refund for the broken kettle."
INVOICE_BODY = "Please pay the attached invoice, amount due 100 EUR."
DIFFERENT = 'cm_gateway_shadow_messages_total{outcome="different"}'
SAME = 'cm_gateway_shadow_messages_total{outcome="same"}'


def _events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_sampled_mail_is_delivered_without_waiting_and_the_diff_is_logged_and_counted(
    tmp_path: Path, emu: EmulatorHandle
):
    """A slow shadow model: replies come first; then one diff line per message, counted."""
    emu.set_faults(version_latency_ms={"staging": 4000})
    refund = numbered_mail(1, "Kettle", REFUND_BODY)
    invoice = numbered_mail(2, "Invoice INV-12345", INVOICE_BODY)
    with capture_logs() as logs:
        async with running_gateway(
            tmp_path,
            rules_yaml=SHADOW_RULES,
            classifier=emulator_classifier(emu, timeout=10.0),
            shadow={"model_version": "staging", "sample": 1.0},
        ) as gw:
            assert (await gw.send(refund))[0] == 250
            assert (await gw.send(invoice))[0] == 250
            # Both replies are in while the shadow model still sleeps on both documents.
            shadow = gw.pipeline.shadow
            assert shadow is not None
            assert shadow.in_flight == 2
            assert gw.metric(DIFFERENT) + gw.metric(SAME) == 0
            await gw.wait_metric(DIFFERENT, 1)
            await gw.wait_metric(SAME, 1)
            only_shadow = gw.metric(
                'cm_gateway_shadow_rule_diff_total{direction="only_shadow",rule="refunds-checked"}'
            )
    assert only_shadow == 1
    assert len(gw.received) == 2
    assert header(gw.received[0].content, "X-Refund") is None  # live decided: no rule
    assert header(gw.received[0].content, "X-CM-Model") == "7"
    assert emu.stats()["requests_by_version"] == {"live": 2, "staging": 2}
    diffs = {e["message_id"]: e for e in _events(logs, "shadow_diff")}
    assert set(diffs) == {"n1@example.com", "n2@example.com"}
    refund_diff = diffs["n1@example.com"]
    assert refund_diff["outcome"] == "different"
    assert refund_diff["rules_only_shadow"] == ["refunds-checked"]
    assert refund_diff["rules_only_live"] == []
    assert refund_diff["live_model_version"] == 7
    assert refund_diff["shadow_model_version"] == 8
    assert refund_diff["verdict_live"] == refund_diff["verdict_shadow"] == "deliver"
    assert refund_diff["queue_id"]
    assert diffs["n2@example.com"]["outcome"] == "same"
    assert diffs["n2@example.com"]["rules_only_shadow"] == []
    # Never the body in a log line.
    assert not any("kettle" in repr(e) or "amount due" in repr(e) for e in logs)


async def test_sample_zero_makes_no_shadow_call(tmp_path: Path, emu: EmulatorHandle):
    """[shadow] sample = 0: no runner, and the API sees only the live model."""
    async with running_gateway(
        tmp_path,
        classifier=emulator_classifier(emu, timeout=10.0),
        shadow={"model_version": "staging", "sample": 0.0},
    ) as gw:
        assert gw.pipeline.shadow is None
        for n in (1, 2, 3):
            assert (await gw.send(numbered_mail(n, "Kettle", REFUND_BODY)))[0] == 250
    assert set(emu.stats()["requests_by_version"]) == {"live"}


async def test_a_failing_shadow_model_changes_nothing_for_the_mail(
    tmp_path: Path, emu: EmulatorHandle
):
    """A shadow version the API does not know (404): mail classified live, error counted."""
    with capture_logs() as logs:
        async with running_gateway(
            tmp_path,
            classifier=emulator_classifier(emu, timeout=10.0),
            shadow={"model_version": 99, "sample": 1.0},
        ) as gw:
            assert (await gw.send(numbered_mail(1, "Invoice INV-12345", INVOICE_BODY)))[0] == 250
            await gw.wait_metric('cm_gateway_shadow_messages_total{outcome="error"}', 1)
    (got,) = gw.received
    assert header(got.content, "X-CM-Status") == "classified"
    assert header(got.content, "X-CM-Rules") == "invoices-to-ap"
    (failed,) = _events(logs, "shadow_failed")
    assert failed["error"] == "not-found"
    assert _events(logs, "shadow_diff") == []


async def test_shadow_calls_over_max_in_flight_are_dropped_and_counted(
    tmp_path: Path, emu: EmulatorHandle
):
    """max_in_flight = 1 and a slow shadow model: the second sampled message is dropped."""
    emu.set_faults(version_latency_ms={"8": 2000})
    async with running_gateway(
        tmp_path,
        classifier=emulator_classifier(emu, timeout=10.0),
        shadow={"model_version": "staging", "sample": 1.0, "max_in_flight": 1},
    ) as gw:
        for n in (1, 2):
            assert (await gw.send(numbered_mail(n, "Kettle", REFUND_BODY)))[0] == 250
        dropped = gw.metric('cm_gateway_shadow_messages_total{outcome="dropped"}')
        await gw.wait_metric(SAME, 1)  # these rules have none that a refund could fire
    assert dropped == 1
    assert gw.metric(DIFFERENT) == 0
    assert len(gw.received) == 2
    assert emu.stats()["requests_by_version"]["staging"] == 1


def test_sampling_is_deterministic_per_document_and_near_the_asked_share():
    """The same document is always sampled the same way; about `sample` of many are."""
    documents = []
    for n in range(200):
        raw = numbered_mail(n)
        documents.append(build_document(parse_message(raw), raw, user_properties={}))
    first = [is_sampled(d, 0.25) for d in documents]
    again = [is_sampled(d, 0.25) for d in documents]
    assert first == again
    assert 25 <= sum(first) <= 75  # 50 expected; the hashes are fixed, so is the count
    assert not any(is_sampled(d, 0.0) for d in documents)
    assert all(is_sampled(d, 1.0) for d in documents)


def test_a_shadow_model_with_the_custom_provider_is_a_config_error(tmp_path: Path):
    """The custom provider has no model versions: refused, naming shadow.model_version."""
    config = build_config(
        {
            "classifier": {"provider": "custom", "url": "http://127.0.0.1:9/x"},
            "shadow": {"model_version": "staging", "sample": 0.5},
        },
        file="gw.toml",
        env={},
    )
    with pytest.raises(ConfigError) as info:
        ShadowRunner.from_config(config)
    assert info.value.where == "shadow.model_version"


def test_an_unknown_shadow_version_of_the_in_process_emulator_is_a_config_error():
    """provider = emulator serves live/staging/7/8 only: 99 is refused at start-up."""
    config = build_config(
        {"classifier": {"provider": "emulator"}, "shadow": {"model_version": 99, "sample": 1}},
        file="gw.toml",
        env={},
    )
    with pytest.raises(ConfigError) as info:
        ShadowRunner.from_config(config)
    assert info.value.where == "shadow.model_version"
