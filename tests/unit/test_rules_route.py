"""The ``route`` rule action: the decision names the next hop, and a route the
configuration does not define is a load error at its file:line:column."""

from __future__ import annotations

import pytest

from gateway.context import CLASSIFIED, MessageContext
from gateway.errors import RuleFileError
from gateway.rules import parse_rules

RULES = """\
rules:
  - name: urgent-to-oncall
    when: { header: { name: X-Priority, contains: "1" } }
    actions:
      - route: oncall
  - name: everything-archived-last
    when: { header: { name: X-Archive, exists: true } }
    actions:
      - route: archive
"""


def ctx(*headers: tuple[str, str]) -> MessageContext:
    return MessageContext(
        mail_from="a@example.com",
        rcpt_tos=("b@example.com",),
        headers=tuple(headers),
        size=10,
        status=CLASSIFIED,
    )


def test_a_matching_route_rule_names_the_route_and_a_later_one_wins() -> None:
    rules = parse_rules(RULES, routes=["oncall", "archive"])
    assert rules.evaluate(ctx(("X-Priority", "1")), default_threshold=0.5).route == "oncall"
    both = ctx(("X-Priority", "1"), ("X-Archive", "yes"))
    decision = rules.evaluate(both, default_threshold=0.5)
    assert decision.route == "archive"
    assert decision.verdict == "deliver"
    assert "route -> oncall" in decision.matches[0].actions
    assert rules.evaluate(ctx(), default_threshold=0.5).route is None


def test_an_unknown_route_is_an_error_at_its_value_with_a_suggestion() -> None:
    with pytest.raises(RuleFileError) as err:
        parse_rules(RULES, file="r.yaml", routes=["on-call", "archive"])
    assert err.value.where == "5:16"
    assert "rule 'urgent-to-oncall'" in str(err.value)
    assert "unknown route 'oncall' (did you mean 'on-call'?)" in str(err.value)


def test_with_no_route_configured_the_error_says_so() -> None:
    with pytest.raises(RuleFileError) as err:
        parse_rules(RULES, file="r.yaml", routes=[])
    assert "[downstream.routes]: none configured" in str(err.value)


def test_without_a_configuration_route_names_are_not_checked() -> None:
    assert len(parse_rules(RULES)) == 2


def test_a_route_name_must_be_a_plain_word() -> None:
    with pytest.raises(RuleFileError) as err:
        parse_rules("rules:\n  - name: r\n    actions:\n      - route: 'a b'\n", file="r.yaml")
    assert err.value.where is not None and err.value.where.startswith("4:")
