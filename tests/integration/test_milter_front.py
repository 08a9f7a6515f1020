"""The milter front against a Python MTA-side client speaking Postfix's milter protocol:
every decision as milter edits, per-message state, progress, hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.errors import ClassifierUnavailable
from gateway.milter import MilterServer
from gateway.milter import _codec as c
from gateway.pipeline import InboundMessage, MessageDecider, MessageEdits, build_processor
from gateway.pipeline._pipeline import Pipeline

from .milter_support import Edits, milter_client
from .pipeline_support import RULES, FixedClassifier, mail, make_config

INVOICE = mail("Invoice INV-12345", "Please find the invoice attached, amount due 100 EUR.")
COMPLAINT = mail("Unacceptable", "This is a complaint: terrible service, I am angry.")
PLAIN = mail("Lunch", "Shall we meet at noon?")
CONTRACT = mail("Contract", "Please sign the attached contract and NDA agreement.")
LEAVE = mail("Leave", "I would like to request annual leave, vacation days off next week.")

HOLD_RULES = (
    RULES
    + """
  - name: hold-lunch
    when: { header: { name: Subject, contains: Lunch } }
    actions:
      - hold: "looks like 100% lunch"
"""
)


@asynccontextmanager
async def running_milter(
    tmp_path: Path,
    *,
    rules_yaml: str = RULES,
    classifier: Any = None,
    config: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[tuple[MilterServer, Pipeline]]:
    sections = dict(config or {})
    settings = {"provider": "emulator", **sections.pop("classifier", {})}
    cfg = make_config(
        tmp_path,
        downstream=f"maildir://{tmp_path}/unused",
        rules_yaml=rules_yaml,
        classifier=settings,
        **sections,
    )
    pipeline = build_processor(cfg, classifier=classifier)
    server = MilterServer(
        "127.0.0.1:0",
        pipeline,
        trusted_networks=cfg.smtp.trusted_networks,
        buffer_limit=cfg.classifier.classify_max_size + 1,
        timeout=5,
    )
    await server.start()
    try:
        yield server, pipeline
    finally:
        await server.aclose(grace=1)
        await pipeline.aclose()


async def one(
    tmp_path: Path, content: bytes, rcpts: tuple[str, ...] = ("support@example.com",), **kw: Any
):
    async with running_milter(tmp_path, **kw) as (server, _), milter_client(server.address) as mta:
        await mta.connect()
        return await mta.message("alice@example.com", rcpts, content)


async def one_with(
    decider: MessageDecider, content: bytes = PLAIN, *, buffer_limit: int = 1000
) -> Edits:
    """One message from a@example.com to b@example.com through a milter server in front
    of ``decider`` (no pipeline)."""
    server = MilterServer("127.0.0.1:0", decider, buffer_limit=buffer_limit, timeout=5)
    await server.start()
    try:
        async with milter_client(server.address) as mta:
            await mta.connect()
            return await mta.message("a@example.com", ["b@example.com"], content)
    finally:
        await server.aclose(grace=1)


def inserted(edits: Edits) -> dict[str, str]:
    return {name: value for _, name, value in edits.inserted}


async def test_negotiation_asks_for_exact_headers_and_the_actions_it_uses(tmp_path: Path) -> None:
    async with running_milter(tmp_path) as (server, _), milter_client(server.address) as mta:
        version, actions, steps = mta.negotiated or (0, 0, 0)
    assert version == 6
    assert actions & c.ACTIONS_WANTED == c.ACTIONS_WANTED
    assert not actions & 0x02  # never the body: DKIM signatures stay valid
    assert steps & c.HDR_LEADSPC
    assert steps & c.NR_HDR and steps & c.NR_BODY  # one round trip per message, not per line


async def test_classified_invoice_gets_headers_below_received_in_order_and_is_redirected(
    tmp_path: Path,
) -> None:
    edits = await one(tmp_path, INVOICE)
    assert edits.final == c.Resp.CONTINUE
    assert [(i, n) for i, n, _ in edits.inserted] == [
        (1, "X-CM-Labels"),
        (2, "X-CM-Model"),
        (3, "X-CM-Status"),
        (4, "X-CM-Rules"),
        (5, "X-Triage-Queue"),
    ]
    values = inserted(edits)
    assert values["X-CM-Status"] == " classified"  # HDR_LEADSPC: the space is ours to give
    assert "Finance > Invoice (0." in values["X-CM-Labels"]
    assert edits.deleted_rcpts == ["<support@example.com>"]
    assert edits.added_rcpts == ["<ap@example.com>"]
    assert edits.changed == []  # nothing else rewritten


async def test_complaint_changes_the_subject_and_adds_a_bcc_recipient(tmp_path: Path) -> None:
    edits = await one(tmp_path, COMPLAINT)
    assert edits.changed == [(1, "Subject", " [Complaint] Unacceptable")]
    assert edits.added_rcpts == ["<quality@example.com>"]
    assert edits.deleted_rcpts == []


async def test_reject_answers_the_rule_text_with_percent_escaped(tmp_path: Path) -> None:
    rules = RULES.replace("Contracts go through the legal portal", "100% legal portal")
    edits = await one(tmp_path, CONTRACT, rules_yaml=rules)
    assert edits.final == c.Resp.REPLYCODE
    assert edits.reply == "550 5.7.1 100%% legal portal"
    assert edits.inserted == []


async def test_defer_answers_451_with_the_rule_text(tmp_path: Path) -> None:
    edits = await one(tmp_path, LEAVE)
    assert edits.reply == "451 4.7.1 HR system maintenance"


async def test_discard_is_a_discard(tmp_path: Path) -> None:
    content = mail("Weekly newsletter", "Our newsletter: unsubscribe here. Weekly digest news.")
    edits = await one(tmp_path, content)
    assert edits.final == c.Resp.DISCARD


async def test_quarantine_replaces_every_recipient(tmp_path: Path) -> None:
    content = mail("Payment", "My card number is 4111 1111 1111 1111, cvv 123.")
    edits = await one(tmp_path, content, rcpts=("a@example.com", "b@example.com"))
    assert edits.deleted_rcpts == ["<a@example.com>", "<b@example.com>"]
    assert edits.added_rcpts == ["<quarantine@example.com>"]
    assert inserted(edits)["X-CM-Quarantine"] == " card-data-quarantined"


async def test_hold_asks_the_mta_to_quarantine_with_the_reason(tmp_path: Path) -> None:
    edits = await one(tmp_path, PLAIN, rules_yaml=HOLD_RULES)
    assert edits.quarantine == "hold-lunch: looks like 100% lunch"
    assert inserted(edits)["X-CM-Hold"] == " hold-lunch: looks like 100% lunch"
    assert edits.final == c.Resp.CONTINUE


async def test_forged_verdict_from_an_untrusted_client_is_deleted(tmp_path: Path) -> None:
    forged = mail("Lunch", "noon?", headers=[("X-CM-Status", "classified"), ("X-CM-Status", "x")])
    edits = await one(tmp_path, forged)
    # Highest index first, empty value = delete.
    assert edits.changed == [(2, "X-CM-Status", ""), (1, "X-CM-Status", "")]


async def test_classifier_down_with_on_error_defer_is_451_4_4_3(tmp_path: Path) -> None:
    broken = FixedClassifier(error=ClassifierUnavailable("down"))
    edits = await one(
        tmp_path, PLAIN, classifier=broken, config={"classifier": {"on_error": "defer"}}
    )
    assert edits.reply is not None and edits.reply.startswith("451 4.4.3 ")


async def test_classifier_down_with_on_error_deliver_marks_unclassified(tmp_path: Path) -> None:
    broken = FixedClassifier(error=ClassifierUnavailable("down"))
    edits = await one(tmp_path, PLAIN, classifier=broken)
    assert edits.final == c.Resp.CONTINUE
    assert inserted(edits)["X-CM-Status"].startswith(" unclassified; reason=")


async def test_two_messages_in_one_session_each_get_their_own_edits(tmp_path: Path) -> None:
    async with running_milter(tmp_path) as (server, _), milter_client(server.address) as mta:
        await mta.connect()
        first = await mta.message("a@example.com", ["support@example.com"], INVOICE)
        second = await mta.message("a@example.com", ["support@example.com"], COMPLAINT)
    assert "Finance > Invoice" in inserted(first)["X-CM-Labels"]
    assert "X-Triage-Queue" not in inserted(second)
    assert "Complaint" in inserted(second)["X-CM-Labels"]
    assert second.added_rcpts == ["<quality@example.com>"] and second.deleted_rcpts == []


async def test_body_over_64k_arrives_whole(tmp_path: Path) -> None:
    seen: list[InboundMessage] = []

    class Recorder:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            seen.append(msg)
            return MessageEdits(verdict="deliver")

    big = mail("Big", "x" * 70 + "\r\n") + b"y" * 200_000 + b"\r\n"
    edits = await one_with(Recorder(), big, buffer_limit=10_000_000)
    assert edits.final == c.Resp.CONTINUE
    assert seen[0].content == big
    assert seen[0].queue_id == "4ABCDEF"
    assert seen[0].peer_ip == "203.0.113.9" and not seen[0].trusted_peer


async def test_slow_decision_sends_progress_about_once_a_second(tmp_path: Path) -> None:
    class Slow:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            await asyncio.sleep(2.5)
            return MessageEdits(verdict="deliver")

    edits = await one_with(Slow())
    assert edits.progress == 2
    assert edits.final == c.Resp.CONTINUE


async def test_a_failing_pipeline_is_answered_451_never_5xx(tmp_path: Path) -> None:
    class Broken:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            raise RuntimeError("secret text")

    edits = await one_with(Broken())
    assert edits.reply == "451 4.3.0 Internal error"
