"""Actions, precedence, stop, audit, placeholders and subject tagging."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.context import MessageContext
from gateway.mail import apply_subject_prefix, apply_subject_prefixes
from gateway.replies import rule_defer, rule_reject
from tests.unit.test_rules_support import context, decide, prediction, rules

INVOICE = prediction({"Finance": 0.92, "Finance > Invoice": 0.92, "Urgent": 0.66})
ORIGINAL = ("inbox@example.com",)


def always(*actions: str, name: str = "r", extra: str = "") -> str:
    """One always-matching rule with the given flow-style actions."""
    return f"rules:\n  - {{name: {name}, actions: [{', '.join(actions)}]{extra}}}\n"


def test_placeholders_expand_at_evaluation_time() -> None:
    """{labels}, {top_label}, {top_probability}, {rule}, {model_version} in header values."""
    text = always(
        "{add_header: {X-L: '{labels}', X-T: '{top_label} ({top_probability})',"
        " X-R: 'by {rule} on model {model_version}', X-B: '{{literal}}'}}",
        name="tagger",
    )
    d = decide(text, context(INVOICE, model_version=8))
    assert d.add_headers == (
        ("X-L", INVOICE.labels_summary()),
        ("X-T", "Finance > Invoice (0.92)"),
        ("X-R", "by tagger on model 8"),
        ("X-B", "{literal}"),
    )
    assert INVOICE.labels_summary() == "Finance (0.92), Finance > Invoice (0.92), Urgent (0.66)"


def test_placeholders_are_empty_for_unclassified_mail() -> None:
    """Without a prediction the prediction placeholders expand to the empty string."""
    text = always("{add_header: {X-T: '[{top_label}|{top_probability}|{labels}|{model_version}]'}}")
    d = decide(text, context(None, model_version=None))
    assert d.add_headers == (("X-T", "[|||]"),)


def test_prefix_subject_is_carried_once_in_rule_order() -> None:
    """The Decision lists each distinct prefix once, in rule order."""
    text = (
        "rules:\n"
        "  - {name: a, actions: [{prefix_subject: '[A] '}]}\n"
        "  - {name: b, actions: [{prefix_subject: '[B] '}]}\n"
        "  - {name: c, actions: [{prefix_subject: '[A] '}]}\n"
    )
    assert decide(text, context(INVOICE)).subject_prefixes == ("[A] ", "[B] ")


@pytest.mark.parametrize(
    ("subject", "prefix", "expected"),
    [
        ("Hello", "[X] ", "[X] Hello"),
        ("[X] Hello", "[X] ", "[X] Hello"),
        ("Re: [X] Hello", "[X] ", "Re: [X] Hello"),
        ("RE[2]: [x]  Hello", "[X] ", "RE[2]: [x]  Hello"),
        ("AW: Fwd: [X] Hello", "[X] ", "AW: Fwd: [X] Hello"),
        ("[External] Re: [X] Hello", "[X] ", "[External] Re: [X] Hello"),
        ("Re: Hello", "[X] ", "[X] Re: Hello"),
        ("Hello [X]", "[X] ", "[X] Hello [X]"),
        ("Hello", "SPAM:", "SPAM: Hello"),
        ("SPAM: Hello", "SPAM:", "SPAM: Hello"),
        ("", "[X] ", "[X]"),
        ("Hello", "   ", "Hello"),
    ],
)
def test_apply_subject_prefix_is_idempotent(subject: str, prefix: str, expected: str) -> None:
    """The prefix is added unless it is already among the leading tags and markers."""
    assert apply_subject_prefix(subject, prefix) == expected
    assert apply_subject_prefix(expected, prefix) == expected


@given(
    subject=st.text(alphabet=st.sampled_from(list("abc[]XRe: Fwd")), max_size=30),
    prefix=st.sampled_from(["[X] ", "[Complaint] ", "SPAM:", "[x]"]),
)
def test_apply_subject_prefix_twice_equals_once(subject: str, prefix: str) -> None:
    """Tagging an already tagged subject never changes it (no '[X] [X]')."""
    once = apply_subject_prefix(subject, prefix)
    assert apply_subject_prefix(once, prefix) == once
    assert apply_subject_prefix("Re: " + once, prefix) == "Re: " + once


def test_apply_subject_prefixes_reads_in_rule_order() -> None:
    """Several prefixes end up in rule order, and re-applying them changes nothing."""
    once = apply_subject_prefixes("Hello", ["[A] ", "[B] "])
    assert once == "[A] [B] Hello"
    assert apply_subject_prefixes(once, ["[A] ", "[B] "]) == once


def test_bcc_adds_recipients_deduplicated_case_insensitively() -> None:
    """bcc keeps the original recipients and adds new ones once."""
    text = always("{bcc: [Inbox@Example.com, audit@example.com]}", "{bcc: AUDIT@example.com}")
    d = decide(text, context(INVOICE))
    assert d.recipients == ("inbox@example.com", "audit@example.com")
    assert d.verdict == "deliver"


def test_later_redirect_replaces_earlier_and_bcc_is_added_to_it() -> None:
    """A later redirect wins; bcc recipients are added to the redirected set."""
    text = (
        "rules:\n"
        "  - {name: a, actions: [{redirect: [one@example.com, two@example.com]}]}\n"
        "  - {name: b, actions: [{bcc: [copy@example.com]}]}\n"
        "  - {name: c, actions: [{redirect: three@example.com}]}\n"
    )
    d = decide(text, context(INVOICE))
    assert d.recipients == ("three@example.com", "copy@example.com")
    assert d.rules_hit == ("a", "b", "c")


def test_quarantine_sends_only_to_the_quarantine_and_marks_the_rule() -> None:
    """quarantine replaces every recipient (bcc too) and adds X-CM-Quarantine: <rule>."""
    text = (
        "rules:\n"
        "  - {name: copy, actions: [{bcc: copy@example.com}, {add_header: {X-A: b}}]}\n"
        "  - {name: pci, actions: [{quarantine: q@example.com}]}\n"
    )
    d = decide(text, context(INVOICE))
    assert d.verdict == "quarantine"
    assert d.recipients == ("q@example.com",)
    assert d.quarantine_address == "q@example.com"
    assert d.add_headers == (("X-A", "b"), ("X-CM-Quarantine", "pci"))


def test_later_quarantine_replaces_an_earlier_one() -> None:
    """Like redirect, the last quarantine decides the address and the marking rule."""
    text = (
        "rules:\n"
        "  - {name: q1, actions: [{quarantine: q1@example.com}]}\n"
        "  - {name: q2, actions: [{quarantine: q2@example.com}]}\n"
    )
    d = decide(text, context(INVOICE))
    assert d.recipients == ("q2@example.com",)
    assert d.add_headers == (("X-CM-Quarantine", "q2"),)


@pytest.mark.parametrize(
    ("actions", "verdict"),
    [
        (["{redirect: a@example.com}", "{quarantine: q@example.com}"], "quarantine"),
        (["{quarantine: q@example.com}", "{discard: true}"], "discard"),
        (["{discard: true}", "{defer: later}"], "defer"),
        (["{defer: later}", "{reject: 'no'}"], "reject"),
        (["{reject: 'no'}", "{redirect: a@example.com}", "{bcc: b@example.com}"], "reject"),
        (["{bcc: b@example.com}", "{add_header: {X-A: b}}"], "deliver"),
    ],
)
def test_precedence_is_fixed_whatever_the_rule_order(actions: list[str], verdict: str) -> None:
    """reject > defer > discard > quarantine > redirect > bcc/headers/subject."""
    for ordered in (actions, list(reversed(actions))):
        text = "rules:\n" + "".join(
            f"  - {{name: r{i}, actions: [{a}]}}\n" for i, a in enumerate(ordered)
        )
        assert decide(text, context(INVOICE)).verdict == verdict


def test_reject_and_defer_replies_use_the_first_rules_text() -> None:
    """reject -> 550 5.7.1 text, defer -> 451 4.7.1 text; the earliest rule's text wins."""
    d = decide(
        always("{reject: 'first'}") + "  - {name: s, actions: [{reject: 'second'}]}\n",
        context(INVOICE),
    )
    assert d.reply == rule_reject("first")
    assert str(d.reply) == "550 5.7.1 first"
    d = decide(always("{defer: 'try later'}"), context(INVOICE))
    assert (d.verdict, d.reply) == ("defer", rule_defer("try later"))
    assert str(d.reply) == "451 4.7.1 try later"


def test_discard_verdict() -> None:
    """discard: true discards."""
    assert decide(always("{discard: true}"), context(INVOICE)).verdict == "discard"


def test_stop_skips_later_rules_and_disabled_rules_are_skipped() -> None:
    """After a matching stop rule, later rules are not evaluated; disabled ones never are."""
    text = (
        "rules:\n"
        "  - {name: switched-off, enabled: false, actions: [{reject: 'no'}]}\n"
        "  - {name: miss, when: {label: HR}, stop: true, actions: [{bcc: hr@example.com}]}\n"
        "  - {name: hit, when: {label: Urgent}, stop: true, actions: [{bcc: u@example.com}]}\n"
        "  - {name: later, actions: [{reject: 'no'}]}\n"
    )
    d = decide(text, context(INVOICE))
    assert d.verdict == "deliver"
    assert d.rules_hit == ("hit",)
    assert [(v.rule, v.matched, v.skipped) for v in d.verdicts] == [
        ("switched-off", False, "disabled"),
        ("miss", False, None),
        ("hit", True, None),
        ("later", False, "after stop"),
    ]
    assert d.verdicts[3].why == "stopped by 'hit'"


AUDITED = (
    "rules:\n"
    "  - {name: tag, actions: [{add_header: {X-Tag: 'yes'}}]}\n"
    "  - {name: trial, audit: true, stop: true,"
    " actions: [{redirect: t@example.com}, {reject: x}]}\n"
    "  - {name: after, actions: [{bcc: b@example.com}]}\n"
)


def test_audited_rule_is_recorded_but_changes_nothing() -> None:
    """Per-rule audit: its actions are in matches, not in the decision; its stop stops nothing."""
    d = decide(AUDITED, context(INVOICE))
    assert d.verdict == "deliver"
    assert d.recipients == (*ORIGINAL, "b@example.com")
    assert d.add_headers == (("X-Tag", "yes"),)
    assert d.rules_hit == ("tag", "after")
    trial = d.matches[1]
    assert (trial.rule, trial.audit, trial.stop) == ("trial", True, True)
    assert trial.actions == ("redirect -> t@example.com", "reject 550 5.7.1 x")
    assert d.audit is False
    assert d.audit_verdict == "reject"
    assert "audited stop in 'trial'" in d.verdicts[2].why


def test_global_audit_mode_changes_nothing_and_reports_what_would_happen() -> None:
    """mode="audit": original recipients, no headers, verdict deliver; audit_verdict says more."""
    ctx = context(INVOICE)
    d = rules(AUDITED, mode="audit").evaluate(ctx, default_threshold=0.25)
    assert (d.verdict, d.recipients, d.add_headers, d.rules_hit) == ("deliver", ORIGINAL, (), ())
    assert d.audit is True
    assert [m.rule for m in d.matches] == ["tag", "trial"]  # stops apply when all is audited
    assert all(m.audit for m in d.matches)
    assert d.verdicts[2].skipped == "after stop"
    assert d.audit_verdict == "reject"


def test_audit_key_at_the_top_of_a_file_audits_all_its_rules() -> None:
    """`audit: true` at the top of a file: every rule of the file is audited."""
    text = "audit: true\n" + always("{quarantine: q@example.com}")
    d = decide(text, context(INVOICE))
    assert (d.verdict, d.recipients, d.audit, d.audit_verdict) == (
        "deliver",
        ORIGINAL,
        True,
        "quarantine",
    )


def test_a_failing_condition_is_a_non_match_with_the_error_in_why() -> None:
    """A bug inside a predicate never escapes: that rule does not match, the others run."""
    text = (
        "rules:\n"
        "  - {name: broken, when: {header: {name: X-A, exists: true}}, actions: [{reject: 'no'}]}\n"
        "  - {name: fine, actions: [{bcc: b@example.com}]}\n"
    )
    bad = MessageContext(
        mail_from="a@example.com",
        rcpt_tos=ORIGINAL,
        headers=((None, "x"),),  # type: ignore[arg-type]
        size=1,
    )
    d = decide(text, bad)
    assert d.verdict == "deliver"
    assert d.verdicts[0].matched is False
    assert d.verdicts[0].why.startswith("error: AttributeError")
    assert d.rules_hit == ("fine",)


def test_a_broken_context_still_yields_a_neutral_decision() -> None:
    """Even a context the engine cannot read at all gives a deliver decision, never raises."""
    bad = MessageContext(mail_from=None, rcpt_tos=None, headers=(), size=1)  # type: ignore[arg-type]
    d = decide(always("{bcc: b@example.com}"), bad)
    assert (d.verdict, d.recipients) == ("deliver", ())
    assert d.verdicts[0].why.startswith("error: ")
