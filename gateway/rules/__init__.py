"""The rules engine: YAML rule files -> a ``RuleSet`` -> a ``Decision`` per message.

    ruleset = load_rules([Path("rules/shared-inbox-triage.yaml")], mode="enforce")
    decision = ruleset.evaluate(ctx, default_threshold=0.25)

The rule language is DESIGN.md §5; the semantics of every open point (domain patterns,
sentiment fallback, placeholders for unclassified mail, audit, precedence) are written
in the docstrings of ``addresses``, ``facts``, ``placeholders``, ``engine`` and
``decision``, and summarised in docs/rules.md.
"""

from __future__ import annotations

from .decision import Decision, RuleMatch, RuleVerdict
from .engine import RuleSet, RuleWarning
from .facts import document_sentiment
from .loader import check_rule_files, load_rules, parse_rules
from .rule import Rule
from .schema import render_schema, rules_json_schema
from .subject import apply_subject_prefix, apply_subject_prefixes

__all__ = [
    "Decision",
    "Rule",
    "RuleMatch",
    "RuleSet",
    "RuleVerdict",
    "RuleWarning",
    "apply_subject_prefix",
    "apply_subject_prefixes",
    "check_rule_files",
    "document_sentiment",
    "load_rules",
    "parse_rules",
    "render_schema",
    "rules_json_schema",
]
