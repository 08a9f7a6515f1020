"""The pipeline end to end: emulator classifier, rules from tmp_path, an SMTP sink."""

from __future__ import annotations

import dataclasses
import re
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway import replies
from gateway.mail import header_fields
from gateway.pipeline import MessageProcessor, build_processor
from gateway.pipeline._trace import count_hops, received_header
from gateway.replies import Reply
from gateway.testing import EmulatorHandle, SinkBehaviour, running_sink

from .pipeline_support import FixedClassifier, inbound, mail, make_config

pytestmark = pytest.mark.emulator(
    faults={"fail_rate": 0.0, "fail_status": "503", "latency_ms": 0.0},
    reset=True,
    token_env="REINFER_TOKEN",
)

INVOICE = mail("Invoice INV-12345", "Please find the invoice attached, amount due 100 EUR.")
COMPLAINT = mail("Unacceptable", "This is a complaint: terrible service, I am angry.")
PLAIN = mail("Lunch", "Shall we meet at noon?")


def fields(content: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in header_fields(content):
        out.setdefault(name.lower(), []).append(value)
    return out


async def run(tmp_path: Path, msg_content: bytes, **kwargs):
    """Process one message through a pipeline delivering to a fresh sink."""
    config_kwargs = kwargs.pop("config", {})
    with running_sink(kwargs.pop("behaviour", None)) as sink:
        pipeline = build_processor(make_config(tmp_path, downstream=sink.url, **config_kwargs))
        try:
            reply = await pipeline.process(inbound(msg_content, **kwargs))
        finally:
            await pipeline.aclose()
    return reply, sink.received


async def test_classified_message_gets_headers_and_is_redirected(tmp_path: Path) -> None:
    """An invoice: X-CM-* and rule headers on top, redirected, original bytes kept, 250 ours."""
    reply, received = await run(tmp_path, INVOICE)
    assert reply == replies.queued("4QTEST1")
    (got,) = received
    assert got.rcpt_tos == ("ap@example.com",)
    assert got.content.endswith(INVOICE)
    h = fields(got.content)
    assert "Finance > Invoice (0." in h["x-cm-labels"][0]
    assert h["x-cm-model"] == ["7"]
    assert h["x-cm-status"] == ["classified"]
    assert h["x-cm-rules"] == ["invoices-to-ap"]
    assert h["x-triage-queue"] == ["accounts-payable"]
    assert got.content.startswith(b"Received: from client.example.com ([127.0.0.1]) by gw.test")


async def test_complaint_gets_subject_prefix_and_bcc(tmp_path: Path) -> None:
    """prefix_subject rewrites only the Subject; bcc adds a recipient."""
    reply, received = await run(tmp_path, COMPLAINT)
    assert reply.code == 250
    (got,) = received
    assert got.rcpt_tos == ("support@example.com", "quality@example.com")
    h = fields(got.content)
    assert h["subject"] == ["[Complaint] Unacceptable"]
    assert h["x-top"] == ["Customer Service > Complaint"]
    assert got.content.endswith(
        COMPLAINT.replace(b"Subject: Unacceptable", b"Subject: [Complaint] Unacceptable")
    )


async def test_quarantine_goes_only_to_the_quarantine_address(tmp_path: Path) -> None:
    """Card data: one recipient, the quarantine mailbox, and X-CM-Quarantine set."""
    content = mail("Payment", "My card number is 4111 1111 1111 1111, cvv 123.")
    reply, received = await run(tmp_path, content, rcpt_tos=("a@example.com", "b@example.com"))
    assert reply.code == 250
    (got,) = received
    assert got.rcpt_tos == ("quarantine@example.com",)
    assert fields(got.content)["x-cm-quarantine"] == ["card-data-quarantined"]


async def test_reject_rule_answers_550_and_delivers_nothing(tmp_path: Path) -> None:
    """A reject rule: 550 5.7.1 with its text."""
    content = mail("Contract", "Please sign the attached contract and NDA agreement.")
    reply, received = await run(tmp_path, content)
    assert reply == Reply(550, "5.7.1", "Contracts go through the legal portal")
    assert received == []


async def test_defer_rule_answers_451_and_delivers_nothing(tmp_path: Path) -> None:
    """A defer rule: 451 4.7.1 with its text."""
    content = mail("Leave request", "I would like to file a leave request for annual leave.")
    reply, received = await run(tmp_path, content)
    assert reply == Reply(451, "4.7.1", "HR system maintenance")
    assert received == []


async def test_discard_rule_answers_250_delivers_nothing_and_says_so(tmp_path: Path) -> None:
    """A discard rule: 250 to the client, nothing delivered, a warning in the log."""
    content = mail("Weekly digest", "Our newsletter. Click to unsubscribe from this mailing list.")
    with capture_logs() as logs:
        reply, received = await run(tmp_path, content)
    assert reply == replies.queued("4QTEST1")
    assert received == []
    assert any(e["event"] == "message_discarded" and e["log_level"] == "warning" for e in logs)


async def test_forged_verdict_from_an_untrusted_peer_is_removed(tmp_path: Path) -> None:
    """X-CM-* from outside trusted_networks are stripped; the gateway writes its own."""
    forged = mail(
        "Lunch",
        "Shall we meet?",
        headers=[
            ("X-CM-Status", "classified"),
            ("X-CM-Rules", "vip-fast-lane"),
            ("X-Cm-Labels", "VIP (1.00)"),
        ],
    )
    reply, received = await run(tmp_path, forged, trusted=False)
    assert reply.code == 250
    h = fields(received[0].content)
    assert h["x-cm-status"] == ["classified"]
    assert "x-cm-rules" not in h
    assert all("VIP" not in v for v in h.get("x-cm-labels", []))


async def test_trusted_peer_verdict_is_kept_and_not_billed_again(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """A trusted peer's verdict stands: not billed, no rule runs, passed on unchanged."""
    upstream = mail(
        "Invoice INV-1",
        "invoice",
        headers=[("X-CM-Status", "classified"), ("X-CM-Labels", "Finance > Invoice (0.97)")],
    )
    classifier = _cm(emu.base_url)
    reply, received = await run(tmp_path, upstream, config={"classifier": classifier})
    assert emu.stats()["documents_billed"] == 0
    assert reply.code == 250
    (got,) = received
    assert got.rcpt_tos == ("support@example.com",)  # invoices-to-ap did not run again
    h = fields(got.content)
    assert h["x-cm-status"] == ["classified"]
    assert h["x-cm-labels"] == ["Finance > Invoice (0.97)"]
    assert "x-needs-review" not in h and "x-cm-rules" not in h
    assert got.content.startswith(b"Received: ")
    assert got.content.endswith(upstream)
    assert got.content.count(b"\r\n", 0, len(got.content) - len(upstream)) == 2


def _cm(base_url: str, **extra: object) -> dict[str, object]:
    return {
        "provider": "communications-mining",
        "base_url": base_url,
        "project": "acme",
        "dataset": "inbox",
        "timeout": 0.5,
        **extra,
    }


@pytest.mark.parametrize(
    ("fault", "reasons"),
    [
        # A 503 is retried inside the budget: the last attempt may be cut by the deadline.
        ("503", {"server-error", "timeout"}),
        ("timeout", {"timeout"}),
        ("403", {"auth"}),  # not retried: the kind shows as it is
    ],
)
async def test_classifier_down_with_on_error_deliver_marks_unclassified(
    tmp_path: Path, emu: EmulatorHandle, fault: str, reasons: set[str]
) -> None:
    """API failing: delivered with X-CM-Status: unclassified; reason=<kind>, rules still run."""
    emu.set_faults(fail_rate=1.0, fail_status=fault)
    reply, received = await run(tmp_path, INVOICE, config={"classifier": _cm(emu.base_url)})
    assert reply == replies.queued("4QTEST1")
    h = fields(received[0].content)
    (status,) = h["x-cm-status"]
    assert status.startswith("unclassified; reason=")
    assert status.removeprefix("unclassified; reason=") in reasons
    assert h["x-needs-review"] == ["yes"]
    assert "x-cm-labels" not in h
    assert received[0].rcpt_tos == ("support@example.com",)


async def test_classifier_down_with_on_error_defer_answers_451(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """API failing and on_error = defer: 451 4.4.3, nothing delivered."""
    emu.set_faults(fail_rate=1.0, fail_status="503")
    classifier = _cm(emu.base_url, on_error="defer")
    reply, received = await run(tmp_path, INVOICE, config={"classifier": classifier})
    assert reply == replies.CLASSIFIER_DEFER
    assert received == []


@pytest.mark.parametrize(
    ("content", "kwargs", "reason"),
    [
        (PLAIN, {"mail_from": ""}, "bounce"),
        (mail("Auto", "x", headers=[("Auto-Submitted", "auto-replied")]), {}, "auto-submitted"),
        (mail("Big", "x\r\n" * 2500), {}, "too-large"),
    ],
)
async def test_skipped_messages_are_not_sent_to_the_classifier(
    tmp_path: Path, emu: EmulatorHandle, content: bytes, kwargs: dict[str, str], reason: str
) -> None:
    """Bounces, auto-submitted and too-large mail: skipped; reason=..., nothing billed."""
    classifier = _cm(emu.base_url, classify_max_size=4000)
    reply, received = await run(tmp_path, content, config={"classifier": classifier}, **kwargs)
    assert emu.stats()["documents_billed"] == 0
    assert reply.code == 250
    assert fields(received[0].content)["x-cm-status"] == [f"skipped; reason={reason}"]


async def test_hostile_label_names_from_the_api_yield_safe_headers(tmp_path: Path) -> None:
    """A label with CR/LF cannot inject a header; a non-ASCII one is RFC 2047 encoded."""
    classifier = FixedClassifier(
        [(("Finance\r\nBcc: evil@example.com",), 0.9), (("Rückerstattung", "Ärger"), 0.8)]
    )
    with running_sink() as sink:
        pipeline = build_processor(
            make_config(tmp_path, downstream=sink.url), classifier=classifier
        )
        reply = await pipeline.process(inbound(PLAIN))
        await pipeline.aclose()
    assert reply.code == 250
    content = sink.received[0].content
    head = content[: content.index(b"\r\n\r\n")]
    assert not any(line.lower().startswith(b"bcc:") for line in head.split(b"\r\n"))
    raw_labels = [v for n, v in header_fields(content) if n == "X-CM-Labels"]
    assert len(raw_labels) == 1
    assert raw_labels[0] == "Finance Bcc: evil@example.com (0.90), Rückerstattung > Ärger (0.80)"
    assert head.isascii()
    line = next(x for x in head.split(b"\r\n") if x.startswith(b"X-CM-Labels:"))
    assert str(make_header(decode_header(line.decode()[len("X-CM-Labels:") :].strip()))).startswith(
        "Finance Bcc"
    )


async def test_too_many_hops_is_a_loop(tmp_path: Path) -> None:
    """More Received fields than smtp.max_hops: 554 5.4.6, nothing delivered."""
    hops = [
        ("Received", f"from h{i} by h{i + 1}; Mon, 1 Jan 2024 00:00:00 +0000") for i in range(6)
    ]
    content = mail("Loop", "x", headers=hops)
    assert count_hops(content) == 6
    reply, received = await run(tmp_path, content, config={"smtp": {"max_hops": 5}})
    assert reply == replies.LOOP_DETECTED
    assert received == []
    reply, received = await run(tmp_path, content, config={"smtp": {"max_hops": 6}})
    assert reply.code == 250


async def test_audit_mode_changes_nothing_but_the_classification_headers(tmp_path: Path) -> None:
    """rules.mode = audit: a reject rule delivers anyway, no recipient or subject change."""
    content = mail("Contract and complaint", "Sign this contract. Also a complaint: unacceptable.")
    reply, received = await run(tmp_path, content, config={"rules": {"mode": "audit"}})
    assert reply == replies.queued("4QTEST1")
    (got,) = received
    assert got.rcpt_tos == ("support@example.com",)
    h = fields(got.content)
    assert h["x-cm-status"] == ["classified"]
    assert "x-cm-labels" in h and "x-cm-model" in h
    assert "x-cm-rules" not in h and "x-top" not in h
    assert h["subject"] == ["Contract and complaint"]


async def test_next_hop_permanent_refusal_is_passed_on(tmp_path: Path) -> None:
    """The next hop's 5xx reaches the client with its enhanced code."""
    behaviour = SinkBehaviour(data_reply="554 5.7.1 Spam detected")
    reply, _ = await run(tmp_path, PLAIN, behaviour=behaviour)
    assert reply == Reply(554, "5.7.1", "Spam detected")


async def test_next_hop_refusing_a_bcc_recipient_defers_the_message(tmp_path: Path) -> None:
    """One refused recipient of two: 451, so the sender retries (see delivery.py)."""
    behaviour = SinkBehaviour(refuse={"quality@example.com": "550 5.1.1 No such user"})
    reply, received = await run(tmp_path, COMPLAINT, behaviour=behaviour)
    assert reply == replies.DOWNSTREAM_PARTIAL
    assert [r.rcpt_tos for r in received] == [("support@example.com",)]


async def test_maildir_next_hop_end_to_end(tmp_path: Path) -> None:
    """maildir:// downstream: the routed message lands in new/."""
    maildir = tmp_path / "maildir"
    pipeline = build_processor(make_config(tmp_path, downstream=f"maildir://{maildir}"))
    assert isinstance(pipeline, MessageProcessor)
    reply = await pipeline.process(inbound(INVOICE))
    await pipeline.aclose()
    assert reply == replies.queued("4QTEST1")
    (stored,) = (maildir / "new").iterdir()
    assert stored.read_bytes().endswith(INVOICE)
    assert b"X-CM-Rules: invoices-to-ap\r\n" in stored.read_bytes()


async def test_one_log_line_per_message_with_stages_and_no_body(tmp_path: Path) -> None:
    """Event 'message': ids, labels, verdict, next hop reply, per-stage times; never the body."""
    with capture_logs() as logs:
        await run(tmp_path, INVOICE)
    lines = [e for e in logs if e["event"] == "message"]
    assert len(lines) == 1
    line = lines[0]
    assert line["queue_id"] == "4QTEST1"
    assert line["message_id"] == "m1@example.com"
    assert line["status"] == "classified"
    assert line["rules_hit"] == ["invoices-to-ap"]
    assert line["verdict"] == "deliver"
    assert line["recipients"] == 1
    assert line["next_hop_code"] == 250
    assert line["next_hop_queue_id"] == "SINK42"
    assert line["reply"] == "250 2.0.0"
    for stage in ("parse_ms", "classify_ms", "rules_ms", "relay_ms", "total_ms"):
        assert isinstance(line[stage], float)
    assert "amount due" not in repr(logs)


async def test_unexpected_error_propagates_after_being_logged(tmp_path: Path) -> None:
    """A bug (not a ClassifierError) reaches the SMTP front, logged with queue id and stage."""
    with running_sink() as sink, capture_logs() as logs:
        pipeline = build_processor(
            make_config(tmp_path, downstream=sink.url),
            classifier=FixedClassifier(error=RuntimeError("boom with body text")),
        )
        with pytest.raises(RuntimeError):
            await pipeline.process(inbound(PLAIN))
        await pipeline.aclose()
    (failed,) = [e for e in logs if e["event"] == "message_failed"]
    assert failed["queue_id"] == "4QTEST1"
    assert failed["stage"] == "classify"
    # Where it broke, without the exception's text.
    assert re.fullmatch(r"pipeline_support\.py:\d+ predict_raw_emails", failed["at"])
    assert "boom" not in repr(failed)
    assert sink.received == []


def test_received_header_names_the_protocol() -> None:
    """UTF8SMTPS/ESMTPSA per RFC 3848/6531; an unsafe HELO is neutralised."""
    msg = inbound(PLAIN, smtp_utf8=True)
    assert " with UTF8SMTP id 4QTEST1; " in received_header(msg, "gw.test")
    hostile = dataclasses.replace(inbound(PLAIN), helo="x\r\nBcc: y", tls=True)
    value = received_header(hostile, "gw.test")
    assert "\r" not in value and "\n" not in value
    assert " with ESMTPS " in value


async def test_retry_after_a_downstream_tempfail_is_not_billed_again(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """Next hop down: 451; the sender's retry is answered from the dedup cache (billed once)."""
    from gateway.testing import free_port

    down = f"smtp://127.0.0.1:{free_port()}"
    pipeline = build_processor(make_config(tmp_path, downstream=down, classifier=_cm(emu.base_url)))
    try:
        first = await pipeline.process(inbound(INVOICE))
        second = await pipeline.process(inbound(INVOICE))
    finally:
        await pipeline.aclose()
    assert first == second == replies.DOWNSTREAM_TEMPFAIL
    assert emu.stats()["documents_billed"] == 1
