"""The shipped rule sets decide what their fixtures say.

Every case in tests/fixtures/rulesets/<rule set>/<case>/ is a message (message.eml),
the model's answer (predictions.json, in the ``explain --predictions`` format) and the
expected decision (expected.json). The envelope is the one ``explain`` assumes: the
From address as sender, the To and Cc addresses as recipients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from gateway.config import embedded_default
from gateway.context import CLASSIFIED
from gateway.emulator import EmulatorClassifier
from gateway.mail import build_document, parse_message
from gateway.pipeline import assumed_envelope, load_predictions_file, message_context
from gateway.rules import Decision, RuleSet, load_rules

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
FIXTURES = ROOT / "tests" / "fixtures" / "rulesets"
RULE_SETS = ("inline-routing", "shared-inbox-triage", "compliance-tagging")
THRESHOLD = embedded_default(env={}).classifier.default_threshold
# The fixtures' decisions are those of business hours (triage copies urgent mail to
# on-call outside them): a Monday, 10:00 in London.
BUSINESS_HOURS = datetime.fromisoformat("2026-12-07T10:00:00+00:00")


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


def _case(ruleset: str, name: str) -> Case:
    return next(c for c in CASES if c.ruleset == ruleset and c.name == name)


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
    ctx = replace(ctx, at=BUSINESS_HOURS)
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


# The same mails through the in-process emulator model (the embedded default's
# classifier) instead of the fixture predictions: the clear cases land where intended.
EMULATOR_CASES = {
    "inline-routing": ("invoice-to-ap", "refund-to-refunds", "it-incident-to-helpdesk"),
    "shared-inbox-triage": ("angry-complaint", "urgent-incident", "newsletter-low"),
    "compliance-tagging": (
        "card-number-quarantined",
        "passport-pii",
        "regulated-advice-archived",
    ),
}


async def _decide_with_emulator(case: Case) -> Decision:
    raw = (case.path / "message.eml").read_bytes()
    parsed = parse_message(raw)
    mail_from, rcpts = assumed_envelope(parsed)
    classifier = EmulatorClassifier(embedded_default(env={}).classifier)
    batch = await classifier.predict_raw_emails([build_document(parsed, raw)])
    ctx = message_context(
        parsed,
        mail_from=mail_from,
        rcpt_tos=rcpts,
        prediction=batch.predictions[0],
        status=CLASSIFIED,
        model_version=batch.model_version,
    )
    ctx = replace(ctx, at=BUSINESS_HOURS)
    return _ruleset(case.ruleset).evaluate(ctx, default_threshold=THRESHOLD)


@pytest.mark.parametrize("ruleset", RULE_SETS)
async def test_emulator_model_routes_clear_fixture_mails_as_intended(ruleset: str) -> None:
    """Fixture mails classified by the emulator model get their expected decision."""
    for name in EMULATOR_CASES[ruleset]:
        case = _case(ruleset, name)
        _assert_matches(await _decide_with_emulator(case), case.expected)


async def test_emulator_model_sends_the_invoice_mail_to_accounts_payable() -> None:
    """The invoice fixture, classified by the emulator, is redirected to ap@ only."""
    decision = await _decide_with_emulator(_case("inline-routing", "invoice-to-ap"))
    assert decision.recipients == ("ap@example.com",)
    assert ("X-Triage-Queue", "accounts-payable") in decision.add_headers
