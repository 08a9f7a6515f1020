"""observe_message's cached children count exactly what fresh .labels() calls count."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.metrics import STAGES, GatewayMetrics, message_outcome

FIELDS = st.fixed_dictionaries(
    {},
    optional={
        **{
            f"{stage}_ms": st.one_of(st.floats(0, 5000), st.integers(0, 5000), st.none())
            for stage in STAGES
        },
        "recipients": st.integers(0, 2),
        "front": st.sampled_from(["smtp", "milter"]),
        "rules_hit": st.lists(st.sampled_from(["a", "b", "urgent"]), max_size=3),
    },
)


def _observe_uncached(metrics: GatewayMetrics, fields: dict[str, Any], code: int) -> None:
    # What observe_message did before it cached the labelled children.
    outcome = message_outcome(fields, code)
    metrics.messages.labels(outcome=outcome).inc()
    metrics.front_messages.labels(front=fields.get("front", "smtp"), outcome=outcome).inc()
    for stage in STAGES:
        ms = fields.get(f"{stage}_ms")
        if isinstance(ms, int | float):
            metrics.stage_seconds.labels(stage=stage).observe(ms / 1000)
    for rule in fields.get("rules_hit") or ():
        metrics.rule_hits.labels(rule=str(rule)).inc()


def _samples(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return [
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")  # a creation timestamp
    ]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(FIELDS, st.sampled_from([250, 250, 451, 550])), max_size=12))
def test_observe_message_counts_what_labels_per_call_counted(
    messages: list[tuple[dict[str, Any], int]],
) -> None:
    cached, fresh = GatewayMetrics(), GatewayMetrics()
    for fields, code in messages:
        cached.observe_message(fields, code)
        _observe_uncached(fresh, fields, code)
        assert _samples(cached.registry) == _samples(fresh.registry)
