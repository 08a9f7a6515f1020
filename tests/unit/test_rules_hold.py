"""The ``hold`` rule action: its place in the precedence, its reason, what the SMTP front
writes for it, what ``rules check`` says about it, and its validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import RuleFileError
from gateway.pipeline import gateway_headers
from gateway.rules import parse_rules

from .test_rules_support import context, decide, prediction

INVOICE = prediction({"Finance": 0.9, "Finance > Invoice": 0.9})

TEXT = """
rules:
  - {name: r1, actions: [{redirect: [a@example.com]}]}
  - {name: r2, actions: [{quarantine: q@example.com}]}
  - {name: h1, actions: [{hold: "card data"}]}
  - {name: h2, actions: [{hold: "second"}]}
  - {name: r3, actions: [{discard: true}]}
"""


def test_hold_ranks_below_discard_and_above_quarantine() -> None:
    d = decide(TEXT, context(INVOICE))
    assert d.verdict == "discard"
    d = decide(TEXT.replace("{discard: true}", "{bcc: b@example.com}"), context(INVOICE))
    assert d.verdict == "hold"
    assert d.hold == "h1: card data"  # the first hold's reason
    # Held with its other edits: released, it goes where it would have gone.
    assert d.recipients == ("q@example.com",)


def test_hold_alone_keeps_the_recipients_and_writes_x_cm_hold() -> None:
    text = 'rules:\n  - {name: h, actions: [{hold: "review"}]}\n'
    ctx = context(INVOICE)
    d = decide(text, ctx)
    assert (d.verdict, d.recipients) == ("hold", ctx.rcpt_tos)
    assert ("X-CM-Hold", "h: review") in gateway_headers(ctx, d)


def test_hold_in_audit_mode_changes_nothing() -> None:
    text = 'rules:\n  - {name: h, audit: true, actions: [{hold: "review"}]}\n'
    ctx = context(INVOICE)
    d = decide(text, ctx)
    assert d.verdict == "deliver" and d.hold is None
    assert all(name != "X-CM-Hold" for name, _ in gateway_headers(ctx, d))


def test_hold_reason_must_be_one_printable_ascii_line() -> None:
    with pytest.raises(RuleFileError):
        parse_rules('rules:\n  - {name: h, actions: [{hold: "caf\\u00e9"}]}\n')


def test_rules_check_says_what_hold_does_in_each_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hold.yaml"
    path.write_text('rules:\n  - {name: h, actions: [{hold: "review"}]}\n', encoding="utf-8")
    code = main(["rules", "check", str(path)])
    _, err = capsys.readouterr()
    assert code == 0
    assert f"{path}:2: warning: rule 'h': hold: the milter front puts the message" in err
    assert "X-CM-Hold" in err and "postsuper -H" in err
