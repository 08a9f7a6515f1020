"""The rules engine: YAML rule files -> a ``RuleSet`` -> a ``Decision`` per message.

    ruleset = load_rules([Path("rules/shared-inbox-triage.yaml")], mode="enforce")
    decision = ruleset.evaluate(ctx, default_threshold=0.25)

The rule language is documented in ``docs/rules.md``. The points it leaves open are
decided here (details in the docstrings of each module):

- A condition mapping with several keys holds when all of them hold (implicit ``all``);
  ``min_probability``/``max_probability`` qualify the ``label`` of the same mapping.
- ``label``: exact ``A > B``, case-sensitive; ``A > *`` = any descendant of A, not A;
  ``*`` = any label. Holds for min <= p <= max; min defaults to ``default_threshold``.
  A label that was not predicted, or an unclassified message, never satisfies it.
- ``sentiment``: the document sentiment, else the mean of the predicted labels'
  sentiments, else none (never holds). ``below``/``above`` are strict, in -1..1.
- ``entity``: ``kind`` case-insensitive, ``value`` regex with ``re.search``.
- ``header``: name case-insensitive; ``matches`` = ``re.search`` on a decoded value,
  ``contains`` = case-insensitive substring, ``exists: true|false``.
- ``from``/``to``: case-insensitive; ``user@dom`` exact, ``@dom`` that domain only (not
  subdomains; write ``*@*.dom`` for them), globs over the whole address, ``<>`` the null
  sender; a list means any; ``to`` holds when one recipient matches.
- ``size``: bytes, strict; ``512KB``/``10MB``/``1GB`` are powers of 1024.
- ``unclassified: true``: status is not ``classified`` (unclassified or skipped).
- Placeholders with nothing to say (unclassified mail, unknown model) expand to ``""``.
- Precedence: reject > defer > discard > hold > quarantine > redirect > bcc/headers/subject;
  the first reject/defer text wins; a later redirect or quarantine replaces an earlier
  one; quarantine drops every other recipient; bcc is added to the final recipients.
- Audit (``mode="audit"``, top-level ``audit: true`` in a file, or per rule): recorded in
  ``Decision.matches`` with its actions, changes nothing; an audited ``stop`` does not
  stop enforced rules. ``Decision.audit_verdict``: what enforcing them would have done.
- ``add_header`` may not set structural headers (Subject, From, Content-Type...).
- Rule names: 1-64 of ``[A-Za-z0-9._-]`` (they go into ``X-CM-Rules``).
- ``time``: the processing moment (``MessageContext.at``) on ``tz``'s wall clock; a
  window wrapping midnight belongs to the day it starts on (see ``_time``).
- ``lists``: pattern files relative to the rule file, part of ``RuleSet.watched_files``.
- ``thread: {matched: RULE}``: RULE is in ``MessageContext.thread_matched`` (filled by
  the pipeline from the conversation memory); it must name a rule of the set.
- ``remove_header``: every instance, from the message as it arrived; the fields
  ``add_header`` refuses, ``Received`` and ``X-CM-*`` are refused.
- Test files (``rules test``): ``_testfile``; a document with ``tests`` at the top.
"""

from __future__ import annotations

from ._decision import Decision, RuleMatch, RuleVerdict
from ._engine import RuleSet
from ._facts import document_sentiment
from ._lint import RuleWarning
from ._loader import check_rule_files, load_rules, parse_rules
from ._rule import Rule
from ._schema import render_schema, rules_json_schema
from ._testfile import (
    RuleTestFileModel,
    RuleTestModel,
    is_test_document,
    load_test_file,
    located_error,
)
from ._yaml import YamlDoc

__all__ = [
    "Decision",
    "Rule",
    "RuleMatch",
    "RuleSet",
    "RuleTestFileModel",
    "RuleTestModel",
    "RuleVerdict",
    "RuleWarning",
    "YamlDoc",
    "check_rule_files",
    "document_sentiment",
    "is_test_document",
    "load_rules",
    "load_test_file",
    "located_error",
    "parse_rules",
    "render_schema",
    "rules_json_schema",
]
