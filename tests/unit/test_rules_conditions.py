"""Every rule condition, and the combinators, hold exactly when they should and say why."""

from __future__ import annotations

import pytest

from gateway.context import Attachment, ClassificationStatus
from gateway.rules import Decision
from tests.unit.test_rules_support import context, decide, prediction

FINANCE = prediction({"Finance": 0.92, "Finance > Invoice": 0.92, "Finance > Refund": 0.4})


def one_rule(when: str) -> str:
    """A rule file with one rule named 'r' and the given YAML condition (flow style)."""
    return f"rules:\n  - name: r\n    when: {when}\n    actions: [{{bcc: x@example.com}}]\n"


def verdict(when: str, ctx: object, threshold: float = 0.25) -> tuple[bool, str]:
    d: Decision = decide(one_rule(when), ctx, threshold=threshold)  # type: ignore[arg-type]
    return d.verdicts[0].matched, d.verdicts[0].why


def test_label_exact_name_matches_only_that_label() -> None:
    """`label: "A > B"` is the exact label; a parent or sibling does not count."""
    assert verdict('{label: "Finance > Invoice"}', context(FINANCE)) == (
        True,
        "label 'Finance > Invoice' probability 0.92 >= 0.25",
    )
    assert verdict('{label: "Finance > Payment Reminder"}', context(FINANCE)) == (
        False,
        "label 'Finance > Payment Reminder' not predicted",
    )
    assert verdict('{label: "Invoice"}', context(FINANCE))[0] is False


def test_label_min_probability_defaults_to_the_threshold_given_to_evaluate() -> None:
    """Without min_probability a label condition uses evaluate's default_threshold."""
    ctx = context(FINANCE)
    assert verdict('{label: "Finance > Refund"}', ctx, threshold=0.25)[0] is True
    assert verdict('{label: "Finance > Refund"}', ctx, threshold=0.5) == (
        False,
        "label 'Finance > Refund' probability 0.4 < 0.5",
    )


def test_label_max_probability_bounds_the_range_inclusively() -> None:
    """min_probability <= p <= max_probability, both ends included."""
    ctx = context(FINANCE)
    held, why = verdict(
        '{label: "Finance > Refund", min_probability: 0.3, max_probability: 0.4}', ctx
    )
    assert held and why == "label 'Finance > Refund' probability 0.4 >= 0.3 and <= 0.4"
    held, why = verdict('{label: "Finance > Invoice", max_probability: 0.9}', ctx)
    assert not held and why == "label 'Finance > Invoice' probability 0.92 > 0.9 (max)"


def test_label_wildcard_matches_descendants_but_not_the_parent_itself() -> None:
    """`Parent > *` is any label below Parent; Parent alone does not satisfy it."""
    assert verdict('{label: "Finance > *", min_probability: 0.5}', context(FINANCE)) == (
        True,
        "label 'Finance > Invoice' probability 0.92 >= 0.5",
    )
    only_parent = context(prediction({"Finance": 0.9}))
    assert verdict('{label: "Finance > *"}', only_parent) == (
        False,
        "no label matching 'Finance > *' predicted",
    )
    deep = context(prediction({"A > B > C": 0.8}))
    assert verdict('{label: "A > *"}', deep)[0] is True


def test_label_wildcard_reports_the_strongest_miss() -> None:
    """When every descendant is out of range, the why names the most probable one."""
    held, why = verdict('{label: "Finance > *", min_probability: 0.95}', context(FINANCE))
    assert not held
    assert why == (
        "no label matching 'Finance > *' in range: "
        "label 'Finance > Invoice' probability 0.92 < 0.95"
    )


def test_bare_star_matches_any_label() -> None:
    """`label: "*"` holds when any label reaches the threshold."""
    assert verdict('{label: "*"}', context(prediction({"Urgent": 0.3})))[0] is True
    assert verdict('{label: "*"}', context(prediction({})))[0] is False


def test_label_conditions_never_hold_for_unclassified_mail() -> None:
    """No prediction: label conditions fail and say the status."""
    ctx = context(None)
    assert verdict('{label: "Finance"}', ctx) == (
        False,
        "label 'Finance': no prediction (status unclassified; reason=timeout)",
    )


def test_sentiment_uses_the_document_sentiment() -> None:
    """sentiment below/above compare the document sentiment, strictly."""
    ctx = context(prediction({"Urgent": 0.9}, sentiment=-0.7))
    assert verdict("{sentiment: {below: -0.5}}", ctx) == (True, "sentiment -0.7 < -0.5 (document)")
    assert verdict("{sentiment: {above: -0.7}}", ctx)[0] is False
    assert verdict("{sentiment: {above: -0.8, below: -0.6}}", ctx)[0] is True


def test_sentiment_falls_back_to_the_mean_of_label_sentiments() -> None:
    """Without a document sentiment, the mean of the labels' sentiments is used."""
    pred = prediction(
        {"Customer Service > Complaint": 0.8, "Urgent": 0.6, "Finance": 0.3},
        label_sentiments={"Customer Service > Complaint": -0.9, "Urgent": -0.3},
    )
    held, why = verdict("{sentiment: {below: -0.5}}", context(pred))
    assert held and why == "sentiment -0.6 < -0.5 (mean of 2 label sentiments)"


def test_sentiment_without_any_sentiment_does_not_hold() -> None:
    """No sentiment anywhere: neither below nor above holds."""
    ctx = context(prediction({"Urgent": 0.9}))
    assert verdict("{sentiment: {below: 1}}", ctx) == (False, "sentiment: no sentiment predicted")
    assert verdict("{sentiment: {above: -1}}", ctx)[0] is False


def test_entity_matches_kind_case_insensitively_and_value_by_regex_search() -> None:
    """entity: kind compares case-insensitively, value is re.search on formatted_value."""
    ctx = context(prediction({}, entities=[("order-number", "ORD-123456"), ("iban", "DE89370400")]))
    assert verdict("{entity: {kind: Order-Number}}", ctx) == (
        True,
        "entity order-number 'ORD-123456'",
    )
    assert verdict("{entity: {kind: iban, value: '^DE'}}", ctx)[0] is True
    assert verdict("{entity: {kind: iban, value: '^FR'}}", ctx)[0] is False
    assert verdict("{entity: {value: '\\d{6}$'}}", ctx)[0] is True


def test_label_property_compares_the_named_property() -> None:
    """label_property: strict below/above on the property's value."""
    ctx = context(prediction({}, properties={"tone": -0.4, "quality_of_service": 0.8}))
    assert verdict("{label_property: {name: tone, below: 0}}", ctx) == (
        True,
        "label_property 'tone' -0.4 < 0",
    )
    assert verdict("{label_property: {name: quality_of_service, above: 0.9}}", ctx)[0] is False
    assert verdict("{label_property: {name: urgency, above: 0}}", ctx) == (
        False,
        "label_property 'urgency' not predicted",
    )


HEADERS = (("Subject", "Invoice INV-2024 overdue"), ("X-Spam", "yes"), ("Received", "a"))


@pytest.mark.parametrize(
    ("condition", "held"),
    [
        ("{header: {name: subject, matches: 'INV-\\d+'}}", True),
        ("{header: {name: Subject, matches: '^overdue'}}", False),
        ("{header: {name: subject, contains: 'OVERDUE'}}", True),
        ("{header: {name: subject, contains: 'paid'}}", False),
        ("{header: {name: x-spam, exists: true}}", True),
        ("{header: {name: List-Id, exists: true}}", False),
        ("{header: {name: List-Id, exists: false}}", True),
        ("{header: {name: List-Id, contains: x}}", False),
    ],
)
def test_header_condition(condition: str, held: bool) -> None:
    """header: matches (regex search), contains (case-insensitive), exists; names ignore case."""
    assert verdict(condition, context(prediction({}), headers=HEADERS))[0] is held


@pytest.mark.parametrize(
    ("pattern", "sender", "held"),
    [
        ("Alice@Customer.Example", "alice@customer.example", True),
        ("'@customer.example'", "bob@CUSTOMER.example", True),
        ("'@customer.example'", "bob@eu.customer.example", False),
        ("'@customer.example'", "bob@evilcustomer.example", False),
        ("'*@*.customer.example'", "bob@eu.customer.example", True),
        ("'*@*.customer.example'", "bob@customer.example", False),
        ("'ali?e@*'", "alice@anywhere.example", True),
        ("[x@y.example, '@customer.example']", "carol@customer.example", True),
        ("'<>'", "", True),
        ("'<>'", "alice@customer.example", False),
        ("'@customer.example'", "<alice@customer.example>", True),
    ],
)
def test_from_patterns(pattern: str, sender: str, held: bool) -> None:
    """from: full address, @domain (not subdomains), glob, list, <> for the null sender."""
    assert verdict(f"{{from: {pattern}}}", context(prediction({}), mail_from=sender))[0] is held


def test_to_holds_when_any_recipient_matches() -> None:
    """to: one matching envelope recipient is enough; the why names it."""
    ctx = context(prediction({}), rcpt_tos=("a@other.example", "Sales@Example.com"))
    assert verdict("{to: '@example.com'}", ctx) == (
        True,
        "to sales@example.com matches @example.com",
    )
    assert verdict("{to: support@example.com}", ctx)[0] is False


@pytest.mark.parametrize(
    ("condition", "size", "held"),
    [
        ("{size: {above: 10MB}}", 10 * 1024 * 1024 + 1, True),
        ("{size: {above: 10MB}}", 10 * 1024 * 1024, False),
        ("{size: {below: 512KB}}", 512 * 1024 - 1, True),
        ("{size: {below: '512 kb'}}", 512 * 1024, False),
        ("{size: {above: 1000, below: 2000}}", 1500, True),
        ("{size: {above: 1.5MiB}}", 1_572_865, True),
    ],
)
def test_size_condition(condition: str, size: int, held: bool) -> None:
    """size: strict bounds in bytes; KB/MB/GB strings are powers of 1024."""
    assert verdict(condition, context(prediction({}), size=size))[0] is held


def test_attachment_globs_must_match_the_same_attachment() -> None:
    """attachment: name and content_type globs (case-insensitive) on one attachment."""
    atts = (Attachment("Report.PDF", "application/pdf", 10), Attachment("a.exe", "text/plain", 5))
    ctx = context(prediction({}), attachments=atts)
    assert verdict("{attachment: {name: '*.pdf'}}", ctx) == (
        True,
        "attachment 'Report.PDF' (application/pdf)",
    )
    assert verdict("{attachment: {content_type: 'application/*'}}", ctx)[0] is True
    assert verdict("{attachment: {name: '*.exe', content_type: 'application/*'}}", ctx)[0] is False
    assert verdict("{attachment: {name: '*.zip'}}", ctx)[0] is False


@pytest.mark.parametrize(
    ("status", "pred", "held"),
    [
        (ClassificationStatus("unclassified", "timeout"), None, True),
        (ClassificationStatus("skipped", "bounce"), None, True),
        (ClassificationStatus("classified"), prediction({}), False),
    ],
)
def test_unclassified_holds_for_unclassified_and_skipped(
    status: ClassificationStatus, pred: object, held: bool
) -> None:
    """unclassified: true holds when the status is not `classified`."""
    ctx = context(pred, status=status)  # type: ignore[arg-type]
    assert verdict("{unclassified: true}", ctx)[0] is held
    assert verdict("{unclassified: false}", ctx)[0] is not held


def test_keys_of_one_mapping_must_all_hold() -> None:
    """Several keys in one condition mapping are an implicit `all`."""
    ctx = context(FINANCE, mail_from="x@customer.example")
    both = verdict("{label: 'Finance > Invoice', from: '@customer.example'}", ctx)
    assert both == (
        True,
        "label 'Finance > Invoice' probability 0.92 >= 0.25 and "
        "from x@customer.example matches @customer.example",
    )
    assert verdict("{label: 'Finance > Invoice', from: '@other.example'}", ctx)[0] is False


def test_combinators_nest_freely() -> None:
    """all / any / not combine conditions to any depth."""
    ctx = context(FINANCE, mail_from="x@customer.example", size=100)
    when = (
        "{all: [{any: [{label: Urgent}, {label: 'Finance > Invoice'}]},"
        " {not: {from: '@spam.example'}}, {not: {any: [{size: {above: 1000}}, {label: HR}]}}]}"
    )
    held, why = verdict(when, ctx)
    assert held
    assert why.startswith("label 'Finance > Invoice' probability 0.92 >= 0.25 and not (from")
    assert verdict("{not: {label: 'Finance > Invoice'}}", ctx) == (
        False,
        "not (label 'Finance > Invoice' probability 0.92 >= 0.25)",
    )
    assert verdict("{any: [{label: Urgent}, {label: HR}]}", ctx) == (
        False,
        "none of: label 'Urgent' not predicted; label 'HR' not predicted",
    )


def test_rule_without_when_always_matches() -> None:
    """A rule with no `when` matches every message."""
    d = decide("rules: [{name: r, actions: [{bcc: x@example.com}]}]", context(None))
    assert d.verdicts[0].matched and d.verdicts[0].why == "no condition (always)"
