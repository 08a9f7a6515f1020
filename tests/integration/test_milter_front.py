"""The milter front against a Python MTA-side client speaking Postfix's milter protocol:
every decision as milter edits, per-message state, progress, hostile input."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ClassifierUnavailable, ConfigError
from gateway.milter import MilterServer
from gateway.milter import _codec as c
from gateway.milter._session import reply_packet
from gateway.ops import Service
from gateway.pipeline import InboundMessage, MessageEdits, build_processor
from gateway.pipeline._pipeline import Pipeline
from gateway.replies import Reply

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
    server = MilterServer("127.0.0.1:0", Recorder(), buffer_limit=10_000_000, timeout=5)
    await server.start()
    try:
        async with milter_client(server.address) as mta:
            await mta.connect()
            edits = await mta.message("a@example.com", ["b@example.com"], big)
    finally:
        await server.aclose(grace=1)
    assert edits.final == c.Resp.CONTINUE
    assert seen[0].content == big
    assert seen[0].queue_id == "4ABCDEF"
    assert seen[0].peer_ip == "203.0.113.9" and not seen[0].trusted_peer


async def test_slow_decision_sends_progress_about_once_a_second(tmp_path: Path) -> None:
    class Slow:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            await asyncio.sleep(2.5)
            return MessageEdits(verdict="deliver")

    server = MilterServer("127.0.0.1:0", Slow(), buffer_limit=1000, timeout=5)
    await server.start()
    try:
        async with milter_client(server.address) as mta:
            await mta.connect()
            edits = await mta.message("a@example.com", ["b@example.com"], PLAIN)
    finally:
        await server.aclose(grace=1)
    assert edits.progress == 2
    assert edits.final == c.Resp.CONTINUE


async def test_a_failing_pipeline_is_answered_451_never_5xx(tmp_path: Path) -> None:
    class Broken:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            raise RuntimeError("secret text")

    server = MilterServer("127.0.0.1:0", Broken(), buffer_limit=1000, timeout=5)
    await server.start()
    try:
        async with milter_client(server.address) as mta:
            await mta.connect()
            edits = await mta.message("a@example.com", ["b@example.com"], PLAIN)
    finally:
        await server.aclose(grace=1)
    assert edits.reply == "451 4.3.0 Internal error"


def test_reply_text_percent_is_doubled() -> None:
    packet = reply_packet(Reply(550, "5.7.1", "50% off"))
    assert packet[5:] == b"550 5.7.1 50%% off\0"


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 0),  # zero length
        struct.pack(">I", 1 << 30) + b"O",  # oversize length
        c.pack(b"Z", b"what"),  # unknown command
        c.pack(c.Cmd.OPTNEG, b"\0\0\0\2"),  # short negotiation
        c.pack(c.Cmd.OPTNEG, struct.pack(">III", 2, 0x1FF, 0)),  # protocol 2
        c.pack(c.Cmd.MAIL, b"<a@b>\0"),  # before negotiation
        struct.pack(">I", 100) + b"Mhalf",  # stream ends inside a packet
    ],
)
async def test_hostile_packets_end_the_connection_and_the_server_keeps_serving(
    tmp_path: Path, garbage: bytes
) -> None:
    async with running_milter(tmp_path) as (server, _):
        host, port = server.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(garbage)
        await writer.drain()
        if garbage.endswith(b"Mhalf"):
            writer.write_eof()
        async with asyncio.timeout(5):
            assert await reader.read() in (b"",)  # closed, nothing answered
        writer.close()
        assert server.sessions == {} or await _drained(server)
        async with milter_client(server.address) as mta:
            await mta.connect()
            edits = await mta.message("a@example.com", ["support@example.com"], PLAIN)
        assert edits.final == c.Resp.CONTINUE


async def _drained(server: MilterServer) -> bool:
    for _ in range(50):
        if not server.sessions:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_client_that_stops_mid_message_leaves_no_session_behind(tmp_path: Path) -> None:
    async with running_milter(tmp_path) as (server, _):
        async with milter_client(server.address) as mta:
            await mta.connect()
            await mta.step(c.Cmd.MAIL, b"<a@example.com>\0", c.NR_MAIL)
            await mta.step(c.Cmd.HEADER, b"Subject\0 half\0", c.NR_HDR)
        assert await _drained(server)


async def test_concurrent_milter_sessions_are_classified_in_batches_under_serve(
    tmp_path: Path,
) -> None:
    """`serve` with the SMTP front off and the milter front on: 8 MTA connections at once
    share batches (batch size > 1), and the messages are counted under front="milter"."""
    cfg = make_config(
        tmp_path,
        downstream=f"maildir://{tmp_path}/unused",
        smtp={"listen": ""},
        milter={"listen": "127.0.0.1:0"},
        classifier={"provider": "emulator", "max_wait_ms": 300},
        metrics={"listen": ""},
    )
    service = Service(cfg)
    await service.start()
    try:

        async def one_session(i: int) -> Edits:
            async with milter_client(service.milter_address) as mta:
                await mta.connect()
                body = f"Please find invoice {i} attached, amount due {i} EUR."
                return await mta.message("a@example.com", ["b@example.com"], mail(f"Inv {i}", body))

        results = await asyncio.gather(*(one_session(i) for i in range(8)))
    finally:
        await service.drain()
    assert all(r.final == c.Resp.CONTINUE for r in results)
    registry = service.metrics.registry
    batches = registry.get_sample_value("cm_gateway_batch_size_count") or 0
    documents = registry.get_sample_value("cm_gateway_batch_size_sum") or 0
    assert documents == 8 and batches < 8, (documents, batches)
    milter = {"front": "milter", "outcome": "delivered"}
    assert registry.get_sample_value("cm_gateway_front_messages_total", milter) == 8
    assert (
        registry.get_sample_value(
            "cm_gateway_front_messages_total", {"front": "smtp", "outcome": "delivered"}
        )
        is None
    )


def test_a_config_with_neither_front_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to serve"):
        make_config(tmp_path, downstream="maildir:///tmp/x", smtp={"listen": ""})


async def test_unix_socket_listen_serves_and_removes_its_socket(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    path.write_text("stale")  # left by a previous run: replaced
    async with running_milter(tmp_path) as (_, pipeline):
        server = MilterServer(f"unix:{path}", pipeline, buffer_limit=100_000, timeout=5)
        await server.start()
        try:
            async with milter_client(f"unix:{path}") as mta:
                await mta.connect()
                edits = await mta.message("a@example.com", ["support@example.com"], INVOICE)
        finally:
            await server.aclose(grace=1)
    assert edits.added_rcpts == ["<ap@example.com>"]
    assert not path.exists()


async def test_shutdown_lets_a_message_being_decided_finish(tmp_path: Path) -> None:
    started = asyncio.Event()

    class Slow:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            started.set()
            await asyncio.sleep(0.5)
            return MessageEdits(verdict="deliver", headers=(("X-CM-Status", "classified"),))

    server = MilterServer("127.0.0.1:0", Slow(), buffer_limit=1000, timeout=5)
    await server.start()
    async with milter_client(server.address) as mta, milter_client(server.address) as idle:
        await mta.connect()
        await idle.connect()
        sending = asyncio.create_task(mta.message("a@example.com", ["b@example.com"], PLAIN))
        await started.wait()
        async with asyncio.timeout(3):  # not the whole grace: the session ends after its answer
            await server.aclose(grace=5)
        edits = await sending
        assert await idle.reader.read() == b""  # the idle connection was closed
    assert edits.final == c.Resp.CONTINUE
    assert [n for _, n, _ in edits.inserted] == ["X-CM-Status"]


async def test_a_silent_connection_is_closed_after_the_milter_timeout(tmp_path: Path) -> None:
    class Never:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            raise AssertionError("no message was sent")

    server = MilterServer("127.0.0.1:0", Never(), buffer_limit=1000, timeout=0.5)
    await server.start()
    try:
        async with milter_client(server.address) as mta:
            await mta.connect()
            await mta.step(c.Cmd.MAIL, b"<a@example.com>\0", c.NR_MAIL)
            async with asyncio.timeout(5):
                assert await mta.reader.read() == b""
        assert await _drained(server)
    finally:
        await server.aclose(grace=1)
