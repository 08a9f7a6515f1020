"""Phase B: the real gateway behind a real Postfix, configured from deploy/postfix/.

client -> Postfix (front smtpd) -> content_filter -> ``python -m gateway serve`` ->
Postfix (reinjection smtpd) -> sink. Every rule action, the SMTP replies Postfix acts on
(550 -> bounce, 451 -> deferred queue), a next hop that is down and a classifier that is
down (both on_error modes) are checked end to end.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from gateway.replies import CLASSIFIER_DEFER, DOWNSTREAM_TEMPFAIL, Reply
from gateway.testing import (
    EmulatorHandle,
    NextHopSink,
    ReceivedMessage,
)

from .postfix_gateway import GatewayRunner, GatewaySpec
from .postfix_harness import (
    PostfixInstance,
    bounce_for,
    make_message,
    postfix_instance,
    postfix_session,
    sink,
    token,
)

__all__ = ["postfix_instance", "postfix_session", "sink"]

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.emulator(token="test-token", faults={"fail_rate": 0.0}),
]

DEFER_RULE = """
  - name: leave-deferred
    when: { label: "HR > Leave Request" }
    actions:
      - defer: "HR system maintenance"
"""

RULES = """
rules:
  - name: contracts-rejected
    when: { label: "Legal > Contract" }
    actions:
      - reject: "Contracts go through the legal portal"
%(defer)s
  - name: card-data-quarantined
    when: { label: "Compliance > Payment Card Data" }
    actions:
      - quarantine: quarantine@example.com
    stop: true
  - name: invoices-to-ap
    when: { label: "Finance > Invoice", min_probability: 0.5 }
    actions:
      - add_header: { X-Triage-Queue: accounts-payable }
      - redirect: [ap@example.com]
    stop: true
  - name: complaints
    when: { label: "Customer Service > Complaint" }
    actions:
      - prefix_subject: "[Complaint] "
      - bcc: [quality@example.com]
      - add_header: { X-Top: "{top_label}" }
  - name: unclassified-flag
    when: { unclassified: true }
    actions:
      - add_header: { X-Needs-Review: "yes" }
"""

# The in-process emulator model; the other specs talk HTTP to the `emulator` fixture.
# Tests are ordered so that the gateway restarts only three times (each start costs
# seconds of imports): STANDARD, then fault_spec(deliver), then fault_spec(defer).
STANDARD = GatewaySpec(rules=RULES % {"defer": DEFER_RULE})


@pytest.fixture(scope="module")
def gateway(postfix_session: PostfixInstance) -> Iterator[GatewayRunner]:
    """The gateway subprocess slot on Postfix's content-filter port (started on demand)."""
    runner = GatewayRunner(
        listen_port=postfix_session.filter_port, downstream_port=postfix_session.reinject_port
    )
    yield runner
    runner.destroy()


@pytest.fixture
def standard_gateway(
    postfix_instance: PostfixInstance, gateway: GatewayRunner
) -> Iterator[GatewayRunner]:
    """The gateway with the standard rule set and the in-process emulator model."""
    gateway.ensure(STANDARD)
    yield gateway
    assert gateway.running, f"the gateway died:\n{gateway.log_tail()}"


def said(reply: Reply) -> str:
    """How a gateway reply shows in Postfix's delay reason ("... said: 451 4.4.1 text")."""
    return f"said: {reply}"


def arrived(sink: NextHopSink, word: str, count: int = 1) -> list[ReceivedMessage]:
    """Wait for ``count`` non-bounce messages whose Subject contains ``word``."""
    return sink.wait_for(count, where=lambda m: not m.is_bounce and word in m.subject)


def all_recipients(messages: list[ReceivedMessage]) -> list[str]:
    """Every envelope recipient over the sink transactions of one message, sorted."""
    return sorted(r for m in messages for r in m.rcpt_tos)


def test_unmatched_mail_arrives_classified_with_its_recipients(
    postfix_instance: PostfixInstance, standard_gateway: GatewayRunner, sink: NextHopSink
) -> None:
    """A mail no rule matches arrives unchanged in routing, with the verdict headers."""
    word = token()
    postfix_instance.send_swaks(
        subject=f"lunch plans {word}",
        body="Shall we meet on Friday at noon?",
        rcpt_tos=("alice@example.com", "bob@example.net"),
    )
    (got,) = arrived(sink, word)
    assert got.mail_from == "sender@example.org"
    assert sorted(got.rcpt_tos) == ["alice@example.com", "bob@example.net"]
    assert got.header("X-CM-Status") == "classified"
    assert got.header("X-CM-Model") == "7"
    assert got.subject == f"lunch plans {word}"
    postfix_instance.wait_empty()


def test_complaint_gets_subject_tag_bcc_and_custom_header(
    postfix_instance: PostfixInstance, standard_gateway: GatewayRunner, sink: NextHopSink
) -> None:
    """prefix_subject, bcc and add_header ({top_label}) all show in the delivered mail."""
    word = token()
    postfix_instance.send(
        make_message(
            subject=f"Complaint about my order {word}",
            body="This is unacceptable, I am very disappointed with your terrible service.",
        )
    )
    got = arrived(sink, word)
    assert all_recipients(got) == ["alice@example.com", "quality@example.com"]
    msg = got[0]
    assert msg.subject == f"[Complaint] Complaint about my order {word}"
    assert msg.header("X-Top") == "Customer Service > Complaint"
    assert "Customer Service > Complaint (" in (msg.header("X-CM-Labels") or "")
    assert "complaints" in (msg.header("X-CM-Rules") or "")
    assert msg.header("X-CM-Status") == "classified"
    postfix_instance.wait_empty()


def test_invoice_is_redirected_to_accounts_payable(
    postfix_instance: PostfixInstance, standard_gateway: GatewayRunner, sink: NextHopSink
) -> None:
    """redirect replaces the recipients; the rule's header and X-CM-Rules are added."""
    word = token()
    postfix_instance.send(
        make_message(
            subject=f"Invoice INV-20240117 {word}",
            body="Please find the invoice attached. The amount due is $1,200.00.",
        ),
        rcpt_tos=["alice@example.com", "bob@example.net"],
    )
    got = arrived(sink, word)
    assert all_recipients(got) == ["ap@example.com"]
    assert got[0].header("X-Triage-Queue") == "accounts-payable"
    assert got[0].header("X-CM-Rules") == "invoices-to-ap"
    assert "Finance > Invoice (" in (got[0].header("X-CM-Labels") or "")
    postfix_instance.wait_empty()


def test_card_data_is_quarantined_and_marked(
    postfix_instance: PostfixInstance, standard_gateway: GatewayRunner, sink: NextHopSink
) -> None:
    """quarantine sends the mail only to the quarantine address, with X-CM-Quarantine."""
    word = token()
    postfix_instance.send(
        make_message(
            subject=f"my payment details {word}",
            body="My card number is 4111 1111 1111 1111, cvv 123, expiry date 12/29.",
        ),
        rcpt_tos=["alice@example.com", "bob@example.net"],
    )
    got = arrived(sink, word)
    assert all_recipients(got) == ["quarantine@example.com"]
    assert got[0].header("X-CM-Quarantine") == "card-data-quarantined"
    postfix_instance.wait_empty()


def test_rule_reject_makes_postfix_bounce_to_the_sender(
    postfix_instance: PostfixInstance, standard_gateway: GatewayRunner, sink: NextHopSink
) -> None:
    """A reject rule answers 550 5.7.1; Postfix returns the mail to its sender with the text."""
    word = token()
    postfix_instance.send(
        make_message(
            subject=f"Signed contract {word}",
            body="Attached is the signed contract and the NDA agreement.",
        )
    )
    (bounce,) = sink.wait_for(where=bounce_for(word))
    assert bounce.rcpt_tos == ("sender@example.org",)
    assert b"550 5.7.1 Contracts go through the legal portal" in bounce.data
    postfix_instance.wait_empty()
    assert not [m for m in sink.messages if not m.is_bounce and word in m.subject]


def test_forged_verdict_headers_from_senders_are_removed(
    postfix_instance: PostfixInstance, standard_gateway: GatewayRunner, sink: NextHopSink
) -> None:
    """X-CM-* headers a sender wrote do not survive (Postfix's loopback is not trusted)."""
    word = token()
    postfix_instance.send(
        make_message(
            subject=f"hello again {word}",
            body="Nothing to see here.",
            extra_headers=[("X-CM-Status", "forged"), ("X-CM-Quarantine", "none")],
        )
    )
    (got,) = arrived(sink, word)
    assert got.headers("X-CM-Status") == ["classified"]
    assert got.headers("X-CM-Quarantine") == []
    postfix_instance.wait_empty()


def test_next_hop_down_gives_451_and_postfix_delivers_when_it_is_back(
    postfix_instance: PostfixInstance, standard_gateway: GatewayRunner, sink: NextHopSink
) -> None:
    """With the reinjection listener closed the gateway answers 451, Postfix keeps every
    mail, and all of them arrive once the listener is back."""
    words = [token() for _ in range(3)]
    postfix_instance.set_reinjection(False)
    for word in words:
        postfix_instance.send(make_message(subject=f"while down {word}", body="hello"))
    entries = postfix_instance.wait_deferred(reason=said(DOWNSTREAM_TEMPFAIL), count=3)
    assert len(entries) == 3
    assert not [m for m in sink.messages if "while down" in m.subject]

    postfix_instance.set_reinjection(True)
    postfix_instance.flush()
    for word in words:
        (got,) = arrived(sink, word)
        assert got.header("X-CM-Status") == "classified"
    postfix_instance.wait_empty()


def test_rule_defer_keeps_mail_in_postfix_until_the_rule_is_gone(
    postfix_instance: PostfixInstance,
    gateway: GatewayRunner,
    emulator: EmulatorHandle,
    sink: NextHopSink,
) -> None:
    """A defer rule answers 451; Postfix keeps the mail deferred and delivers it once the
    gateway runs without that rule."""
    gateway.ensure(STANDARD)
    word = token()
    postfix_instance.send(
        make_message(subject=f"Annual leave {word}", body="My leave request: vacation in May.")
    )
    (entry,) = postfix_instance.wait_deferred(reason="451 4.7.1 HR system maintenance")
    assert entry.recipients == ("alice@example.com",)
    assert not [m for m in sink.messages if word in m.subject]

    # The same rules minus the defer rule (and the emulator over HTTP, healthy).
    gateway.ensure(fault_spec(emulator, "deliver"))
    postfix_instance.flush()
    (got,) = arrived(sink, word)
    assert got.rcpt_tos == ("alice@example.com",)
    assert "HR > Leave Request (" in (got.header("X-CM-Labels") or "")
    postfix_instance.wait_empty()


def fault_spec(emulator: EmulatorHandle, on_error: str) -> GatewaySpec:
    """The standard rules without the defer rule; the classifier is ``emulator`` over HTTP."""
    return GatewaySpec(
        rules=RULES % {"defer": ""},
        provider="communications-mining",
        base_url=emulator.base_url,
        token=emulator.token or "test-token",
        on_error=on_error,
        classifier_timeout=2.0,
    )


def test_classifier_down_with_on_error_deliver_delivers_unclassified(
    postfix_instance: PostfixInstance,
    gateway: GatewayRunner,
    emulator: EmulatorHandle,
    sink: NextHopSink,
) -> None:
    """API failing (503) with on_error=deliver: the mail arrives marked unclassified."""
    gateway.ensure(fault_spec(emulator, "deliver"))
    emulator.set_faults(fail_rate=1.0, fail_status="503")
    try:
        word = token()
        postfix_instance.send(make_message(subject=f"Invoice {word}", body="invoice attached"))
        (got,) = arrived(sink, word)
    finally:
        emulator.set_faults(fail_rate=0.0)
    status = got.header("X-CM-Status") or ""
    assert re.fullmatch(r"unclassified; reason=[a-z_-]+", status), status
    assert "skipped" not in status
    assert got.header("X-Needs-Review") == "yes"
    # The invoice rule could not match: the recipients are untouched.
    assert got.rcpt_tos == ("alice@example.com",)
    postfix_instance.wait_empty()


def test_classifier_down_with_on_error_defer_waits_in_postfix_until_it_recovers(
    postfix_instance: PostfixInstance,
    gateway: GatewayRunner,
    emulator: EmulatorHandle,
    sink: NextHopSink,
) -> None:
    """API failing with on_error=defer: 451, deferred in Postfix; classified once it is back."""
    gateway.ensure(fault_spec(emulator, "defer"))
    emulator.set_faults(fail_rate=1.0, fail_status="503")
    try:
        word = token()
        postfix_instance.send(make_message(subject=f"Invoice {word}", body="invoice attached"))
        (entry,) = postfix_instance.wait_deferred(reason=said(CLASSIFIER_DEFER))
        assert entry.recipients == ("alice@example.com",)
    finally:
        emulator.set_faults(fail_rate=0.0)
    assert not [m for m in sink.messages if word in m.subject]
    postfix_instance.flush()
    got = arrived(sink, word)
    assert got[0].header("X-CM-Status") == "classified"
    assert all_recipients(got) == ["ap@example.com"]
    postfix_instance.wait_empty()
