"""Rules engine: conditions, combinators, actions, precedence, stop and audit."""

from __future__ import annotations

from gateway.replies import rule_defer, rule_reject
from tests.unit.test_rules_support import context, decide, prediction

INVOICE = prediction({"Finance": 0.92, "Finance > Invoice": 0.92, "Urgent": 0.66})

ROUTE_INVOICES = """
rules:
  - name: invoices-to-ap
    when:
      label: "Finance > Invoice"
      min_probability: 0.7
    actions:
      - add_header: { X-Triage-Queue: accounts-payable }
      - redirect: [ap@example.com]
    stop: true
"""


def test_label_match_redirects_adds_header_and_explains_why() -> None:
    """A label above min_probability applies the rule's actions and records the evidence."""
    d = decide(ROUTE_INVOICES, context(INVOICE))
    assert d.verdict == "deliver"
    assert d.recipients == ("ap@example.com",)
    assert d.add_headers == (("X-Triage-Queue", "accounts-payable"),)
    assert d.rules_hit == ("invoices-to-ap",)
    assert d.matches[0].why == "label 'Finance > Invoice' probability 0.92 >= 0.7"
    assert d.verdicts[0].matched is True


def test_label_below_min_probability_does_not_match() -> None:
    """A label under min_probability leaves the message alone and says why."""
    d = decide(ROUTE_INVOICES, context(prediction({"Finance > Invoice": 0.5})))
    assert d.recipients == ("inbox@example.com",)
    assert d.matches == ()
    assert d.verdicts[0].why == "label 'Finance > Invoice' probability 0.5 < 0.7"


def test_reject_wins_over_every_delivery_action() -> None:
    """reject > defer > discard > quarantine > redirect."""
    text = """
rules:
  - {name: r1, actions: [{redirect: [a@example.com]}]}
  - {name: r2, actions: [{quarantine: q@example.com}]}
  - {name: r3, actions: [{discard: true}]}
  - {name: r4, actions: [{defer: "later"}]}
  - {name: r5, actions: [{reject: "go away"}]}
"""
    d = decide(text, context(INVOICE))
    assert d.verdict == "reject"
    assert d.reply == rule_reject("go away")
    d = decide(text.replace('{reject: "go away"}', "{bcc: b@example.com}"), context(INVOICE))
    assert d.verdict == "defer"
    assert d.reply == rule_defer("later")
