"""Rule files: every kind of error lands on its file:line:column and names the rule;
valid files load with their positions, labels and warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import RuleFileError
from gateway.rules import check_rule_files, load_rules, parse_rules

HEAD = "rules:\n  - name: invoices-to-ap\n"

# (YAML, expected "line:col", fragment of the message). Lines and columns are 1-based.
ERRORS = [
    pytest.param(
        HEAD + "    when:\n      label: X\n      min_probability: 1.5\n",
        "5:24",
        "rule 'invoices-to-ap': when.min_probability: must be <= 1",
        id="probability-above-1",
    ),
    pytest.param(
        HEAD + "    when:\n      label: X\n      max_probability: -0.1\n",
        "5:24",
        "when.max_probability: must be >= 0",
        id="probability-below-0",
    ),
    pytest.param(
        HEAD
        + "    when:\n      label: X\n      min_probability: 0.9\n      max_probability: 0.5\n",
        "5:7",
        "when.min_probability: must be <= max_probability (0.5), got 0.9",
        id="min-above-max",
    ),
    pytest.param(
        HEAD + "    when:\n      min_probability: 0.9\n",
        "4:7",
        "min_probability needs a 'label' in the same mapping",
        id="threshold-without-label",
    ),
    pytest.param(
        HEAD + "    when:\n      sentiment: {above: 0.5, below: 0.1}\n",
        "4:19",
        "when.sentiment.above: must be less than below (0.1), got 0.5",
        id="impossible-sentiment-range",
    ),
    pytest.param(
        HEAD + "    when:\n      sentiment: {below: -2}\n",
        "4:26",
        "when.sentiment.below: must be >= -1",
        id="sentiment-out-of-range",
    ),
    pytest.param(
        HEAD + "    when:\n      lable: Finance\n",
        "4:7",
        "unknown condition 'lable' (did you mean 'label'?)",
        id="unknown-condition",
    ),
    pytest.param(
        HEAD + "    stpo: true\n",
        "3:5",
        "rule 'invoices-to-ap': stpo: unknown key 'stpo' (did you mean 'stop'?)",
        id="unknown-rule-key",
    ),
    pytest.param(
        "rule:\n  - name: a\n",
        "1:1",
        "unknown key 'rule' (did you mean 'rules'?)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        HEAD + "    when:\n      header: {name: Subject, match: x}\n",
        "4:31",
        "when.header.match: unknown key 'match' in header (did you mean 'matches'?)",
        id="unknown-nested-key",
    ),
    pytest.param(
        HEAD + "    actions:\n      - forward: [a@example.com]\n",
        "4:9",
        "actions[0].forward: unknown action 'forward' (actions: add_header, prefix_subject",
        id="unknown-action",
    ),
    pytest.param(
        HEAD + "    when:\n      header: {name: Subject, matches: '(unclosed'}\n",
        "4:40",
        "when.header.matches: bad regex '(unclosed': missing ), unterminated subpattern",
        id="bad-header-regex",
    ),
    pytest.param(
        HEAD + "    when:\n      entity: {kind: iban, value: '[DE'}\n",
        "4:35",
        "when.entity.value: bad regex '[DE'",
        id="bad-entity-regex",
    ),
    pytest.param(
        HEAD + "    actions:\n      - redirect: [ap@example.com, 'not an address']\n",
        "4:36",
        "actions[0].redirect[1]: not an address",
        id="address-with-spaces",
    ),
    pytest.param(
        HEAD + "    actions:\n      - bcc: ap.example.com\n",
        "4:14",
        "actions[0].bcc: not an address of the form local@domain: 'ap.example.com'",
        id="address-without-at",
    ),
    pytest.param(
        HEAD + '    actions:\n      - quarantine: "q@example.com\\r\\nRCPT TO:<x@evil>"\n',
        "4:21",
        "actions[0].quarantine: not an address",
        id="address-with-crlf",
    ),
    pytest.param(
        HEAD + "    when:\n      from: '@bad domain'\n",
        "4:13",
        "when.from: not an address pattern",
        id="bad-from-pattern",
    ),
    pytest.param(
        HEAD + "    actions:\n      - add_header: {X-Queue: '{queue}'}\n",
        "4:31",
        "actions[0].add_header.X-Queue: unknown placeholder {queue} (known: {labels}",
        id="unknown-placeholder",
    ),
    pytest.param(
        HEAD + "    actions:\n      - add_header: {X-Queue: '{top_probability:.1f}'}\n",
        "4:31",
        "placeholder {top_probability} takes no format",
        id="placeholder-with-format",
    ),
    pytest.param(
        HEAD + "    actions:\n      - add_header: {X-Queue: 'a } b'}\n",
        "4:31",
        "bad placeholder syntax",
        id="unbalanced-brace",
    ),
    pytest.param(
        HEAD + "    actions:\n      - add_header: {'X Queue': a}\n",
        "4:22",
        "actions[0].add_header.X Queue: bad header name 'X Queue'",
        id="bad-header-name",
    ),
    pytest.param(
        HEAD + "    actions:\n      - add_header: {Subject: a}\n",
        "4:22",
        "add_header cannot set 'Subject' (use prefix_subject)",
        id="structural-header",
    ),
    pytest.param(
        HEAD + '    actions:\n      - add_header: {X-A: "a\\r\\nBcc: x@evil.example"}\n',
        "4:27",
        "actions[0].add_header.X-A: a header value must be one line (no CR/LF)",
        id="crlf-in-header-value",
    ),
    pytest.param(
        HEAD + '    actions:\n      - reject: "Go away\\r\\n250 OK"\n',
        "4:17",
        "actions[0].reject: a reply text must be one line (no CR/LF)",
        id="crlf-in-reject-text",
    ),
    pytest.param(
        HEAD + '    actions:\n      - defer: "later\\nplease"\n',
        "4:16",
        "actions[0].defer: a reply text must be one line (no CR/LF)",
        id="lf-in-defer-text",
    ),
    pytest.param(
        HEAD + '    actions:\n      - prefix_subject: "[X]\\n"\n',
        "4:25",
        "a subject prefix must be one line (no CR/LF)",
        id="crlf-in-prefix",
    ),
    pytest.param(
        HEAD + "    actions:\n      - discard: false\n",
        "4:18",
        "actions[0].discard: must be true",
        id="discard-not-spelled-out",
    ),
    pytest.param(
        HEAD + "    actions:\n      - redirect: a@example.com\n        bcc: b@example.com\n",
        "4:9",
        "an action is a mapping with exactly one key, got 2: bcc, redirect",
        id="two-keys-in-one-action",
    ),
    pytest.param(
        HEAD + "    when:\n      size: {above: 10 MBytes}\n",
        "4:21",
        "when.size.above: bad size '10 MBytes'",
        id="bad-size",
    ),
    pytest.param(
        HEAD + "    when:\n      label: 'Finance > *voice'\n",
        "4:14",
        "'*' may only stand alone as the last part",
        id="bad-label-wildcard",
    ),
    pytest.param(
        HEAD + "    when:\n      any: []\n",
        "4:12",
        "when.any: must not be empty",
        id="empty-any",
    ),
    pytest.param(
        HEAD + "    when: {}\n",
        "3:11",
        "when: empty condition",
        id="empty-condition",
    ),
    pytest.param(
        HEAD + "    when:\n      header: {name: X-A, contains: a, exists: true}\n",
        "4:40",
        "header needs exactly one of 'matches', 'contains', 'exists'",
        id="header-two-tests",
    ),
    pytest.param(
        HEAD + "    when:\n      all:\n        - not:\n            label_property: {name: tone}\n",
        "6:30",
        "when.all[0].not.label_property.name: label_property needs 'below' and/or 'above'",
        id="nested-error-path",
    ),
    pytest.param(
        HEAD + "    enabled: no thanks\n",
        "3:14",
        "enabled: must be true or false",
        id="not-a-boolean",
    ),
    pytest.param(
        HEAD + "    actions:\n      - reject: no\n",
        "4:17",
        "must be a string, got False: quote it",
        id="yaml-norway-problem",
    ),
    pytest.param(
        HEAD + "    stop: true\n    stop: false\n",
        "4:5",
        "rule 'invoices-to-ap': duplicate key 'stop' (first at line 3)",
        id="duplicate-key-in-rule",
    ),
    pytest.param(
        HEAD + "    when:\n      label: A\n      label: B\n",
        "5:7",
        "rule 'invoices-to-ap': when: duplicate key 'label' (first at line 4)",
        id="duplicate-key-in-condition",
    ),
    pytest.param(
        "rules:\n  - name: a\n  - name: a\n",
        "3:11",
        "rule 'a': duplicate rule name (first defined at test.yaml:2)",
        id="duplicate-rule-name",
    ),
    pytest.param(
        "rules:\n  - when: {label: X}\n",
        "2:5",
        "rule #1: missing required key 'name'",
        id="missing-name",
    ),
    pytest.param(
        "rules:\n  - name: 'invoices to ap'\n",
        "2:11",
        "rule 'invoices to ap': name: bad rule name",
        id="bad-rule-name",
    ),
    pytest.param(
        "rules:\n  - name: a\n    when: [label, X]\n",
        "3:11",
        "rule 'a': when: must be a mapping",
        id="wrong-type",
    ),
    pytest.param("rules: [\n  - name: a\n", "2:3", "expected the node content", id="yaml-syntax"),
    pytest.param("", "1:1", "empty rule file", id="empty-file"),
    pytest.param("- name: a\n", "1:1", "must be a mapping", id="top-level-list"),
    pytest.param(
        "rules:\n  - name: a\n    when: &c {label: X}\n  - name: b\n    when:\n      <<: *c\n",
        "6:7",
        "rule 'b': when: '<<' merge keys are not supported",
        id="merge-key",
    ),
]


@pytest.mark.parametrize(("text", "where", "fragment"), ERRORS)
def test_rule_file_error_names_line_column_and_rule(text: str, where: str, fragment: str) -> None:
    """Each kind of mistake is refused at the exact line:column, with a readable message."""
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, file="test.yaml")
    err = info.value
    assert (err.file, err.where) == ("test.yaml", where), str(err)
    assert fragment in err.message, str(err)
    assert str(err).startswith(f"test.yaml:{where}: ")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_duplicate_rule_names_across_files_are_an_error(tmp_path: Path) -> None:
    """The same name in two files: refused at the second, naming the first."""
    first = write(tmp_path, "a.yaml", "rules:\n  - name: x\n")
    second = write(tmp_path, "b.yaml", "rules:\n  - name: y\n  - name: x\n")
    with pytest.raises(RuleFileError) as info:
        load_rules([first, second])
    assert info.value.file == str(second)
    assert info.value.where == "3:11"
    assert f"first defined at {first}:2" in info.value.message


def test_first_error_reports_how_many_more_and_check_lists_them_all(tmp_path: Path) -> None:
    """load_rules raises the first error (counting the rest); check_rule_files returns all."""
    text = (
        "rules:\n"
        "  - name: a\n"
        "    when: {label: X, min_probability: 2}\n"
        "    actions: [{redirect: nobody}]\n"
        "  - name: b\n"
        "    stp: true\n"
    )
    path = write(tmp_path, "r.yaml", text)
    with pytest.raises(RuleFileError) as info:
        load_rules([path])
    assert info.value.where == "3:39"
    assert info.value.message.endswith("(and 2 more errors)")
    errors = check_rule_files([path, tmp_path / "missing.yaml"])
    assert [(e.where, e.message.split(":")[0]) for e in errors] == [
        ("3:39", "rule 'a'"),
        ("4:26", "rule 'a'"),
        ("6:5", "rule 'b'"),
        (None, "cannot read"),
    ]


def test_unreadable_and_non_utf8_files_are_errors(tmp_path: Path) -> None:
    """A missing file or a file that is not UTF-8 is refused with the file name."""
    with pytest.raises(RuleFileError, match="cannot read"):
        load_rules([tmp_path / "nope.yaml"])
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"rules: []\n# caf\xe9\n")
    with pytest.raises(RuleFileError, match="not UTF-8") as info:
        load_rules([latin])
    assert info.value.file == str(latin)


KITCHEN_SINK = """\
description: every condition and action once
rules:
  - name: everything
    description: a rule that uses every key
    enabled: true
    audit: false
    when:
      all:
        - label: "Finance > Invoice"
          min_probability: 0.5
          max_probability: 1
        - any:
            - label: "Customer Service > *"
            - sentiment: {below: -0.5, above: -1}
            - entity: {kind: invoice-number, value: '^INV-\\d+$'}
            - label_property: {name: tone, below: 0}
            - header: {name: Subject, matches: '(?i)invoice'}
            - header: {name: X-A, contains: b}
            - header: {name: X-B, exists: false}
            - from: ['@example.com', '*@*.example.org', a@b.example, '<>']
            - to: billing@example.com
            - size: {above: 1KB, below: 10MB}
            - attachment: {name: '*.pdf', content_type: 'application/*'}
            - unclassified: true
            - time: {days: [mon-fri, sun], between: "22:00-06:00", tz: Europe/London}
            - thread: {matched: everything}
        - not: {label: Urgent}
    actions:
      - add_header: {X-Triage-Queue: "{rule}: {top_label} ({top_probability})", X-L: "{labels}"}
      - prefix_subject: "[Invoice] "
      - bcc: [audit@example.com]
      - redirect: ap@example.com
      - quarantine: quarantine@example.com
      - reject: "No invoices here"
      - defer: "Try again later"
      - discard: true
      - remove_header: [X-Spam-Flag, X-Old]
    stop: true
"""


def test_every_condition_and_action_loads_and_records_positions(tmp_path: Path) -> None:
    """A file using every key loads; rules remember their file, line and texts."""
    path = write(tmp_path, "all.yaml", KITCHEN_SINK)
    ruleset = load_rules([path])
    (rule,) = ruleset.rules
    assert (rule.name, rule.source, rule.stop) == ("everything", f"{path}:3", True)
    assert len(rule.actions) == 9
    assert rule.condition_text.startswith("all(label 'Finance > Invoice' probability >= 0.5")
    assert ruleset.labels_referenced() == {"Finance > Invoice", "Customer Service", "Urgent"}
    assert ruleset.files == (str(path),)


def test_rule_files_are_evaluated_in_the_order_given(tmp_path: Path) -> None:
    """Rules of several files are concatenated in file order."""
    a = write(tmp_path, "a.yaml", "rules:\n  - name: a1\n  - name: a2\n")
    b = write(tmp_path, "b.yaml", "audit: true\nrules:\n  - name: b1\n")
    ruleset = load_rules([b, a], mode="audit")
    assert [r.name for r in ruleset.rules] == ["b1", "a1", "a2"]
    assert [r.audit for r in ruleset.rules] == [True, False, False]
    assert ruleset.mode == "audit" and ruleset.audit


WARNINGS = """\
rules:
  - name: catch-all-stop
    when: {label: Urgent}
    stop: true
  - name: same-condition
    when: {label: Urgent}
  - name: narrower
    when: {label: Urgent, from: '@example.com'}
  - name: other-label
    when: {label: HR}
  - name: impossible
    when: {all: [{label: HR}, {unclassified: true}]}
  - name: impossible-nested
    when: {any: [{unclassified: true, sentiment: {below: 0}}, {label: IT}]}
  - name: off
    enabled: false
  - name: audited-stop
    audit: true
    stop: true
  - name: after-audited-stop
    when: {label: Legal}
"""


def test_warnings_flag_disabled_impossible_and_shadowed_rules() -> None:
    """warnings(): disabled, contradictory and shadowed-by-an-earlier-stop rules."""
    ruleset = parse_rules(WARNINGS.replace("name: off", "name: switched-off"), file="w.yaml")
    found = [(w.rule, w.line, w.text) for w in ruleset.warnings()]
    assert found == [
        (
            "same-condition",
            5,
            "shadowed: earlier rule 'catch-all-stop' stops and has the same condition",
        ),
        (
            "narrower",
            7,
            "shadowed: earlier rule 'catch-all-stop' stops and has a more general condition",
        ),
        (
            "impossible",
            11,
            "can never match: asks for unclassified: true together with label (needs a prediction)",
        ),
        (
            "impossible-nested",
            13,
            "can never match: asks for unclassified: true together with sentiment "
            "(needs a prediction)",
        ),
        ("switched-off", 15, "disabled: never evaluated"),
    ]
    assert ruleset.warnings()[0] == ("w.yaml", 5, "same-condition", found[0][2])
    assert str(ruleset.warnings()[0]).startswith("w.yaml:5: rule 'same-condition': shadowed")


def test_a_stop_rule_without_condition_shadows_everything_after_it() -> None:
    """An enforced stop rule with no `when` makes every later rule unreachable."""
    ruleset = parse_rules("rules:\n  - {name: a, stop: true}\n  - {name: b, when: {label: X}}\n")
    assert [w.text for w in ruleset.warnings()] == [
        "shadowed: earlier rule 'a' stops and has no condition"
    ]
