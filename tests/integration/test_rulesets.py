"""The shipped rule sets decide what their fixtures say.

Every case in tests/fixtures/rulesets/<rule set>/<case>/ is a message (message.eml),
the model's answer (predictions.json, in the ``explain --predictions`` format) and the
expected decision (expected.json). The envelope is the one ``explain`` assumes: the
From address as sender, the To and Cc addresses as recipients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from gateway.config import embedded_default
from gateway.explain import (
    assumed_envelope,
    default_threshold,
    load_predictions_file,
    message_context,
)
from gateway.payload import parse_message
from gateway.rules import Decision, RuleSet, load_rules

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
FIXTURES = ROOT / "tests" / "fixtures" / "rulesets"
RULE_SETS = ("inline-routing", "shared-inbox-triage", "compliance-tagging")
THRESHOLD = default_threshold(embedded_default(env={}))


@dataclass(frozen=True)
class Case:
    ruleset: str
    name: str
    path: Path

    @property
    def expected(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "expected.json").read_text())
        return data


def _cases() -> list[Case]:
    return [
        Case(ruleset, case.name, case)
        for ruleset in RULE_SETS
        for case in sorted((FIXTURES / ruleset).iterdir())
        if case.is_dir()
    ]


CASES = _cases()


@cache
def _ruleset(name: str) -> RuleSet:
    return load_rules([RULES / f"{name}.yaml"])


@cache
def _decide(case: Case) -> Decision:
    raw = (case.path / "message.eml").read_bytes()
    parsed = parse_message(raw)
    mail_from, rcpts = assumed_envelope(parsed)
    given = load_predictions_file(case.path / "predictions.json")
    ctx = message_context(
        parsed,
        mail_from=mail_from,
        rcpt_tos=rcpts,
        prediction=given.prediction,
        status=given.status,
        model_version=given.model_version,
    )
    return _ruleset(case.ruleset).evaluate(ctx, default_threshold=THRESHOLD)


def _assert_matches(decision: Decision, expected: dict[str, Any]) -> None:
    assert decision.verdict == expected["verdict"]
    assert list(decision.recipients) == expected["recipients"]
    assert list(decision.rules_hit) == expected["rules_hit"]
    assert list(decision.subject_prefixes) == expected["subject_prefixes"]
    for name, value in expected["headers"]:
        assert (name, value) in decision.add_headers, (
            f"{name}: {value} not in {decision.add_headers}"
        )
    written = {name.lower() for name, _ in decision.add_headers}
    for name in expected.get("absent_headers", []):
        assert name.lower() not in written, f"{name} should not be written"
    if "quarantine_address" in expected:
        assert decision.quarantine_address == expected["quarantine_address"]


def test_every_rule_set_has_at_least_five_fixture_cases() -> None:
    """Each shipped rule set is covered by five or more fixture cases."""
    for ruleset in RULE_SETS:
        assert sum(1 for c in CASES if c.ruleset == ruleset) >= 5, ruleset


@pytest.mark.parametrize("case", CASES, ids=[f"{c.ruleset}/{c.name}" for c in CASES])
def test_fixture_case_gets_its_expected_decision(case: Case) -> None:
    """Rule set + fixture mail + fixture predictions -> the decision in expected.json."""
    _assert_matches(_decide(case), case.expected)


def test_every_header_a_rule_set_writes_appears_once_per_message() -> None:
    """No fixture decision carries two values of one X-Triage-* header."""
    for case in CASES:
        decision = _decide(case)
        names = [n.lower() for n, _ in decision.add_headers if n.lower().startswith("x-triage-")]
        assert len(names) == len(set(names)), f"{case.ruleset}/{case.name}: {names}"


def test_shipped_rule_sets_have_no_lint_warnings() -> None:
    """No shipped rule is shadowed or unable to match."""
    for name in RULE_SETS:
        assert _ruleset(name).warnings() == [], name
