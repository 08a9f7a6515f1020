"""The real gateway as a milter of a real Postfix, configured from deploy/postfix-milter/.

client -> Postfix (front smtpd, smtpd_milters = the gateway) -> queue -> sink. Every
action end to end as the client and the sink see it, the hold queue, the gateway down
with both milter_default_action values, progress against milter_content_timeout, and
local submission (non_smtpd_milters).
"""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gateway.testing import EmulatorHandle, NextHopSink, ReceivedMessage, running_emulator

from .postfix_gateway import GatewaySpec
from .postfix_harness import POSTSUPER, free_port, token
from .postfix_milter_support import MilterGateway, MilterPostfix, milter_stack
from .test_dkim import FIXTURES as DKIM_FIXTURES
from .test_dkim import verify

__all__ = ["milter_stack"]

pytestmark = pytest.mark.postfix

RULES = """
rules:
  - name: contracts-rejected
    when: { label: "Legal > Contract" }
    actions:
      - reject: "Contracts go through the 100% legal portal"
  - name: leave-deferred
    when: { label: "HR > Leave Request" }
    actions:
      - defer: "HR system 50% maintenance"
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
  - name: newsletters-dropped
    when: { label: "Notification > Newsletter" }
    actions:
      - discard: true
  - name: hold-on-request
    when: { header: { name: Subject, contains: "please hold" } }
    actions:
      - hold: "held for review"
"""

Stack = tuple[MilterPostfix, MilterGateway, NextHopSink]


@pytest.fixture
def stack(milter_stack: Stack) -> Iterator[Stack]:
    postfix, gateway, sink = milter_stack
    postfix.configure("")
    gateway.ensure(GatewaySpec(rules=RULES))
    postfix.purge()
    sink.clear()
    yield milter_stack
    postfix.purge()


def message(subject: str, body: str, *, headers: str = "") -> bytes:
    text = (
        f"{headers}From: Sender <sender@example.org>\r\nTo: alice@example.com\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{token()}@example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"{body}\r\n"
    )
    return text.encode()


def send(
    postfix: MilterPostfix, content: bytes, rcpts: tuple[str, ...] = ("alice@example.com",)
) -> tuple[int, bytes]:
    """One message through Postfix's front smtpd; the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", postfix.front_port, timeout=60) as client:
        client.ehlo("client.harness.test")
        client.mail("sender@example.org")
        for rcpt in rcpts:
            client.rcpt(rcpt)
        return client.data(content)


def last_message_line(gateway: MilterGateway) -> dict[str, object]:
    """The gateway's last ``message`` log line (JSON)."""
    lines: list[dict[str, object]] = [
        json.loads(x) for x in gateway.log_tail(400).splitlines() if x.startswith("{")
    ]
    return [x for x in lines if x.get("event") == "message"][-1]


def header_names(received: ReceivedMessage) -> list[str]:
    head = received.data.split(b"\r\n\r\n", 1)[0].decode()
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line[:1] not in (" ", "\t")]


def test_invoice_headers_land_just_below_postfixs_received_and_the_body_is_unchanged(
    stack: Stack,
) -> None:
    postfix, gateway, sink = stack
    word = token()
    content = message(f"Invoice INV-1 {word}", "Please find the invoice, amount due 100 EUR.")
    code, _ = send(postfix, content)
    assert code == 250
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert got.rcpt_tos == ("ap@example.com",)
    names = header_names(got)
    assert names[:6] == [
        "Received",
        "X-CM-Labels",
        "X-CM-Model",
        "X-CM-Status",
        "X-CM-Rules",
        "X-Triage-Queue",
    ]
    assert got.header("X-CM-Status") == "classified"
    assert got.data.split(b"\r\n\r\n", 1)[1] == content.split(b"\r\n\r\n", 1)[1]
    # The original header block follows ours byte for byte.
    original = content.split(b"\r\n\r\n", 1)[0]
    assert original in got.data
    # One log line, with Postfix's own queue id (the {i} macro) and the client's address.
    line = last_message_line(gateway)
    assert line["front"] == "milter" and line["peer"] == "127.0.0.1"
    assert f"{line['queue_id']}: " in postfix.maillog.read_text(errors="replace")


def test_complaint_subject_prefix_and_bcc(stack: Stack) -> None:
    postfix, _, sink = stack
    word = token()
    send(postfix, message(f"Unacceptable {word}", "This is a complaint: terrible service."))
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert got.rcpt_tos == ("alice@example.com", "quality@example.com")
    assert got.subject == f"[Complaint] Unacceptable {word}"
    assert header_names(got)[0] == "Received"


def test_quarantine_by_address_replaces_the_recipients(stack: Stack) -> None:
    postfix, _, sink = stack
    word = token()
    content = message(f"Payment {word}", "My card number is 4111 1111 1111 1111, cvv 123.")
    send(postfix, content, ("alice@example.com", "bob@example.com"))
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert got.rcpt_tos == ("quarantine@example.com",)
    assert got.header("X-CM-Quarantine") == "card-data-quarantined"


def test_reject_reaches_the_client_with_its_percent(stack: Stack) -> None:
    postfix, _, _ = stack
    content = message("Contract", "Please sign the attached contract and NDA agreement.")
    code, text = send(postfix, content)
    assert (code, text) == (550, b"5.7.1 Contracts go through the 100% legal portal")
    assert postfix.queue() == []


def test_defer_reaches_the_client_as_451(stack: Stack) -> None:
    postfix, _, _ = stack
    content = message("Leave", "I would like to request annual leave, vacation days off.")
    code, text = send(postfix, content)
    assert (code, text) == (451, b"4.7.1 HR system 50% maintenance")


def test_discard_is_accepted_and_never_delivered(stack: Stack) -> None:
    postfix, _, sink = stack
    word = token()
    code, _ = send(postfix, message(f"Weekly newsletter {word}", "Our newsletter: unsubscribe."))
    assert code == 250
    postfix.wait_empty()
    assert [m for m in sink.messages if word in m.subject] == []


def test_hold_lands_in_postfixs_hold_queue_and_is_delivered_after_release(stack: Stack) -> None:
    postfix, _, sink = stack
    word = token()
    code, _ = send(postfix, message(f"please hold {word}", "Lunch at noon?"))
    assert code == 250
    (held,) = [e for e in postfix.queue() if e.queue_name == "hold"]
    assert [m for m in sink.messages if word in m.subject] == []
    postfix._run(POSTSUPER, "-c", str(postfix.config_dir), "-H", held.queue_id)
    postfix.flush()
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert got.header("X-CM-Hold") == "hold-on-request: held for review"


def test_forged_verdict_from_the_client_is_removed(stack: Stack) -> None:
    postfix, _, sink = stack
    word = token()
    forged = "X-CM-Status: classified\r\nX-CM-Labels: Fake (1.00)\r\n"
    send(postfix, message(f"Lunch {word}", "Shall we meet at noon?", headers=forged))
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert not any("Fake" in v for v in got.headers("X-CM-Labels"))
    assert got.headers("X-CM-Status") == ["classified"]


def test_two_messages_in_one_session_each_get_their_own_labels(stack: Stack) -> None:
    postfix, _, sink = stack
    word = token()
    invoice = message(f"Invoice {word}", "Please find the invoice, amount due 100 EUR.")
    plain = message(f"Lunch {word}", "Shall we meet at noon?")
    with smtplib.SMTP("127.0.0.1", postfix.front_port, timeout=60) as client:
        client.ehlo("client.harness.test")
        client.sendmail("sender@example.org", ["alice@example.com"], invoice)
        client.sendmail("sender@example.org", ["alice@example.com"], plain)
    got = {m.subject: m for m in sink.wait_for(2, where=lambda m: word in m.subject)}
    assert got[f"Invoice {word}"].rcpt_tos == ("ap@example.com",)
    lunch = got[f"Lunch {word}"]
    assert lunch.rcpt_tos == ("alice@example.com",)
    assert lunch.headers("X-Triage-Queue") == []
    assert "Invoice" not in (lunch.header("X-CM-Labels") or "")


def test_body_over_64k_is_classified_and_kept_byte_for_byte(stack: Stack) -> None:
    postfix, _, sink = stack
    word = token()
    body = "\r\n".join(f"line {i} of the invoice, amount due {i} EUR" for i in range(6000))
    content = message(f"Invoice {word}", body)
    assert len(content) > 200_000
    send(postfix, content)
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert got.data.split(b"\r\n\r\n", 1)[1] == content.split(b"\r\n\r\n", 1)[1]
    assert got.header("X-CM-Status") == "classified"


def test_local_submission_through_sendmail_goes_through_the_milter(stack: Stack) -> None:
    postfix, _, sink = stack
    word = token()
    postfix.sendmail(message(f"Invoice {word}", "The invoice, amount due 100 EUR."), "bob@x.test")
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert got.rcpt_tos == ("ap@example.com",)
    assert got.header("X-CM-Rules") == "invoices-to-ap"


@pytest.mark.parametrize(("on_error", "expected"), [("deliver", "unclassified"), ("defer", "451")])
def test_classifier_down_with_each_on_error(
    milter_stack: Stack, on_error: str, expected: str
) -> None:
    postfix, gateway, sink = milter_stack
    postfix.configure("")
    postfix.purge()
    spec = GatewaySpec(
        rules=RULES,
        provider="communications-mining",
        base_url="http://127.0.0.1:9",  # nothing listens there
        on_error=on_error,
        classifier_timeout=1.0,
    )
    gateway.ensure(spec)
    word = token()
    code, text = send(postfix, message(f"Lunch {word}", "noon?"))
    if expected == "451":
        assert code == 451 and text.startswith(b"4.4.3 "), (code, text, gateway.log_tail(60))
    else:
        assert code == 250
        (got,) = sink.wait_for(where=lambda m: word in m.subject)
        assert (got.header("X-CM-Status") or "").startswith("unclassified; reason=")


@pytest.mark.parametrize("action", ["tempfail", "accept"])
def test_gateway_stopped_follows_milter_default_action(milter_stack: Stack, action: str) -> None:
    postfix, gateway, sink = milter_stack
    postfix.configure(f"milter_default_action = {action}\n")
    gateway.stop()
    postfix.purge()
    word = token()
    try:
        if action == "tempfail":
            with smtplib.SMTP("127.0.0.1", postfix.front_port, timeout=60) as client:
                client.ehlo("client.harness.test")
                code, text = client.mail("sender@example.org")
            assert (code, text[:5]) == (451, b"4.7.1")
            return
        # Belt and braces on a loaded machine: retry while the answer is still the
        # snippet's tempfail, or while Postfix, just reloaded, does not answer at all (a
        # full parallel run saw one session get no reply for 60 s, with the gateway stopped
        # and so not in the path).
        deadline = time.monotonic() + 90
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", postfix.front_port, timeout=20) as client:
                    client.ehlo("client.harness.test")
                    code, _ = client.mail("sender@example.org")
                    if code == 250:
                        client.rcpt("alice@example.com")
                        code, _ = client.data(message(f"Invoice {word}", "the invoice, due"))
                        assert code == 250
                        break
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                assert time.monotonic() < deadline, f"{exc}\n{postfix.log_tail(40)}"
                continue
            assert code == 451 and time.monotonic() < deadline, code
            time.sleep(0.5)
        (got,) = sink.wait_for(where=lambda m: word in m.subject)
        assert got.headers("X-CM-Status") == []  # through, unclassified, unrouted
        assert got.rcpt_tos == ("alice@example.com",)
    finally:
        postfix.configure("")


def test_slow_classifier_outlasting_milter_content_timeout_is_kept_alive_by_progress(
    milter_stack: Stack,
) -> None:
    postfix, gateway, sink = milter_stack
    postfix.configure("milter_content_timeout = 3s\n")
    postfix.purge()
    with running_emulator() as emu:
        _slow(emu)
        spec = GatewaySpec(
            rules=RULES,
            provider="communications-mining",
            base_url=emu.base_url,
            token=emu.token or "",
            classifier_timeout=10.0,
        )
        try:
            gateway.ensure(spec)
            word = token()
            code, _ = send(postfix, message(f"Invoice {word}", "The invoice, amount due 100."))
            assert code == 250
            (got,) = sink.wait_for(where=lambda m: word in m.subject)
            assert got.header("X-CM-Status") == "classified"
        finally:
            gateway.stop()
            postfix.configure("")


def _slow(emu: EmulatorHandle) -> None:
    emu.set_faults(fail_rate=0.0, fail_status="503", latency_ms=5000.0)


@pytest.mark.parametrize("fixture", ["signed-simple.eml", "signed-relaxed.eml"])
def test_a_dkim_signed_message_still_verifies_after_the_milters_edits(
    stack: Stack, fixture: str
) -> None:
    postfix, _, sink = stack
    signed = (DKIM_FIXTURES / fixture).read_bytes()
    before = {id(m) for m in sink.messages}
    code, _ = send(postfix, signed)
    assert code == 250
    (got,) = sink.wait_for(where=lambda m: id(m) not in before and b"INV-20240117" in m.data)
    assert got.header("X-CM-Status") == "classified"
    assert verify(got.data)


def test_concurrent_sessions_through_postfix_are_classified_in_batches(
    milter_stack: Stack,
) -> None:
    postfix, gateway, sink = milter_stack
    postfix.configure("")
    postfix.purge()
    metrics_port = free_port()
    spec = GatewaySpec(
        rules=RULES,
        env=(
            ("CM_GATEWAY_METRICS_LISTEN", f"127.0.0.1:{metrics_port}"),
            # Batches wait up to 500 ms to fill, even when no request is in flight (the
            # fixed mode: the adaptive default sends a lone first message at once).
            ("CM_GATEWAY_CLASSIFIER_TARGET_BATCH", "0"),
            ("CM_GATEWAY_CLASSIFIER_MAX_WAIT_MS", "500"),
            ("CM_GATEWAY_CLASSIFIER_SEND_WHEN_IDLE", "false"),
        ),
    )
    gateway.ensure(spec)
    word = token()
    with ThreadPoolExecutor(10) as pool:
        codes = list(
            pool.map(lambda i: send(postfix, message(f"Lunch {i} {word}", "noon?"))[0], range(10))
        )
    assert codes == [250] * 10
    sink.wait_for(10, where=lambda m: word in m.subject)
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(("cm_gateway_batch_size_", "cm_gateway_front_messages_total"))
    }
    assert samples["cm_gateway_batch_size_sum"] == 10
    assert samples["cm_gateway_batch_size_count"] < 10  # at least one batch of several
    assert samples['cm_gateway_front_messages_total{front="milter",outcome="delivered"}'] == 10
