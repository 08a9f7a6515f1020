"""A refused rule reload is counted at /metrics (the old rules stay in use)."""

from __future__ import annotations

from pathlib import Path

from gateway.metrics import GatewayMetrics
from gateway.pipeline import build_processor

from .ops_support import sample
from .pipeline_support import make_config

FAILURES = "cm_gateway_rules_reload_failures_total"


async def test_a_rule_file_that_does_not_validate_counts_a_reload_failure(tmp_path: Path):
    """Reloading a broken rule file returns False, keeps the rules, and counts one failure;
    a good file then reloads without counting."""
    config = make_config(tmp_path, downstream="maildir://m")
    metrics = GatewayMetrics()
    pipeline = build_processor(config, metrics=metrics)
    try:
        rules = pipeline.rules
        rule_file = tmp_path / "rules.yaml"
        good = rule_file.read_text(encoding="utf-8")
        rule_file.write_text("rules:\n  - name: broken\n    when: { nope: 1 }\n", encoding="utf-8")
        assert pipeline.reload_rules(trigger="test") is False
        assert pipeline.rules is rules
        assert sample(metrics.render().decode(), FAILURES) == 1
        rule_file.write_text(good, encoding="utf-8")
        assert pipeline.reload_rules(trigger="test") is True
        assert sample(metrics.render().decode(), FAILURES) == 1
    finally:
        await pipeline.aclose()
