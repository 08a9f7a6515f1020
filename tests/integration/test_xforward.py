"""XFORWARD end to end over real sockets: offered to trusted peers only, validated,
reset per transaction, logged on the message line, and passed on to a next hop that
offers it (gateway.testing.NextHopSink with SinkBehaviour.xforward), pooled connections included."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from gateway import replies
from gateway.deliver import XForward
from gateway.deliver._delivery import SmtpDelivery
from gateway.pipeline import build_processor
from gateway.testing import XFORWARD_ALL, NextHopSink, SinkBehaviour, running_sink

from .pipeline_support import make_config
from .smtp_front_support import RawClient, RecordingProcessor, running_server, smtp_config

MESSAGE = b"From: a@example.net\r\nTo: b@example.com\r\nSubject: hello\r\n\r\nHi.\r\n"
TRUSTED = smtp_config(xforward_networks=["127.0.0.0/8"])
OFFER = "250-XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"
ORIGIN = "XFORWARD NAME=mx.origin.example ADDR=192.0.2.7 PORT=40512 PROTO=ESMTP"
ORIGIN_2 = "XFORWARD HELO=mx.origin.example IDENT=4QFRONT7 SOURCE=REMOTE"


def _ehlo_lines(raw: RawClient) -> list[str]:
    raw.send(b"EHLO client.test\r\n")
    lines: list[str] = []
    while not lines or lines[-1][3:4] == "-":
        while b"\r\n" not in raw.buf:
            raw.buf += raw.sock.recv(4096)
        line, raw.buf = raw.buf.split(b"\r\n", 1)
        lines.append(line.decode())
    return lines


def _transaction(raw: RawClient, rcpt: str = "b@example.com") -> str:
    assert raw.cmd("MAIL FROM:<a@example.net>").startswith("250")
    assert raw.cmd(f"RCPT TO:<{rcpt}>").startswith("250")
    assert raw.cmd("DATA").startswith("354")
    return raw.cmd(MESSAGE + b".\r\n")


async def test_ehlo_offers_xforward_to_trusted_peers_and_the_verb_is_unknown_to_others():
    """A trusted peer sees XFORWARD in EHLO and HELP; for an untrusted one it is not
    offered and answered exactly like any unknown verb."""

    def session(port: int) -> tuple[list[str], str, str, str]:
        raw = RawClient(port)
        try:
            raw.reply()
            lines = _ehlo_lines(raw)
            help_text = raw.cmd("HELP")
            return lines, help_text, raw.cmd("XFORWARD ADDR=192.0.2.7"), raw.cmd("XBOGUS a=b")
        finally:
            raw.close()

    async with running_server(RecordingProcessor(), TRUSTED) as trusted:
        t_ehlo, t_help, t_reply, _ = await asyncio.to_thread(session, trusted.port)
    async with running_server(RecordingProcessor(), smtp_config()) as untrusted:
        u_ehlo, u_help, u_reply, u_bogus = await asyncio.to_thread(session, untrusted.port)
    assert OFFER in t_ehlo and t_ehlo[-1].startswith("250 ")
    assert "XFORWARD" in t_help
    assert t_reply == str(replies.OK)
    assert not [line for line in u_ehlo if "XFORWARD" in line]
    assert "XFORWARD" not in u_help
    assert u_reply.startswith("500") and u_reply == u_bogus.replace("XBOGUS", "XFORWARD")


async def test_xforward_networks_and_trusted_networks_are_separate_lists():
    """A peer in xforward_networks only (the Postfix-in-front setup) is offered XFORWARD
    and its attributes are used, while its message is not from a trusted peer (so the
    X-CM-* headers its senders wrote are stripped by the pipeline)."""
    processor = RecordingProcessor()
    async with running_server(processor, TRUSTED) as srv:

        def session() -> list[str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                lines = _ehlo_lines(raw)
                assert raw.cmd(ORIGIN) == str(replies.OK)
                assert _transaction(raw).startswith("250")
                return lines
            finally:
                raw.close()

        lines = await asyncio.to_thread(session)
    assert OFFER in lines
    msg = processor.messages[0]
    assert msg.forwarded is not None and msg.forwarded.addr == "192.0.2.7"
    assert msg.trusted_peer is False


async def test_malformed_xforward_gets_501_and_none_of_it_is_applied():
    """Bad syntax, unknown attributes, bad values, control characters (CR, NUL) and
    over-long values are refused 501 as a whole; the message then carries nothing."""
    bad = [
        "XFORWARD",
        "XFORWARD ADDR",
        "XFORWARD ADDR=",
        "XFORWARD COLOUR=blue",
        "XFORWARD ADDR=192.0.2.7 PORT=99999",  # the valid ADDR is not applied either
        "XFORWARD ADDR=not-an-address",
        "XFORWARD NAME=bad!name",
        "XFORWARD HELO=a+0Db",  # xtext for a CR
        "XFORWARD IDENT=a+00b",  # xtext for a NUL
        "XFORWARD HELO=a+zz",  # broken xtext
        "XFORWARD SOURCE=ELSEWHERE",
        "XFORWARD PROTO=" + "P" * 65,
        "XFORWARD HELO=" + "h" * 256,
    ]
    processor = RecordingProcessor()
    async with running_server(processor, TRUSTED) as srv:

        def session() -> list[str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                _ehlo_lines(raw)
                answers = [raw.cmd(line) for line in bad]
                assert _transaction(raw).startswith("250")
                return answers
            finally:
                raw.close()

        answers = await asyncio.to_thread(session)
    assert [a[:9] for a in answers] == ["501 5.5.4"] * len(bad), answers
    assert processor.messages[0].forwarded is None


async def test_xforward_inside_a_transaction_gets_503():
    """After MAIL FROM, XFORWARD is refused 503 5.5.1 and the transaction goes on."""
    processor = RecordingProcessor()
    async with running_server(processor, TRUSTED) as srv:

        def session() -> str:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                _ehlo_lines(raw)
                assert raw.cmd("MAIL FROM:<a@example.net>").startswith("250")
                answer = raw.cmd("XFORWARD ADDR=192.0.2.7")
                assert raw.cmd("RCPT TO:<b@example.com>").startswith("250")
                assert raw.cmd("DATA").startswith("354")
                assert raw.cmd(MESSAGE + b".\r\n").startswith("250")
                return answer
            finally:
                raw.close()

        answer = await asyncio.to_thread(session)
    assert answer == str(replies.XFORWARD_IN_TRANSACTION)
    assert processor.messages[0].forwarded is None


async def test_attributes_merge_per_command_and_reset_after_each_transaction_and_rset():
    """Two XFORWARD commands add up (xtext decoded, [UNAVAILABLE] is None); the next
    transaction, and one after XFORWARD + RSET, carry nothing."""
    processor = RecordingProcessor()
    async with running_server(processor, TRUSTED) as srv:

        def session() -> None:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                _ehlo_lines(raw)
                assert raw.cmd(ORIGIN) == str(replies.OK)
                assert raw.cmd("XFORWARD HELO=mx+2Bx.example IDENT=4QF NAME=[unavailable]")
                assert _transaction(raw).startswith("250")
                assert _transaction(raw).startswith("250")
                assert raw.cmd("XFORWARD ADDR=IPv6:2001:DB8::7") == str(replies.OK)
                assert raw.cmd("RSET").startswith("250")
                assert _transaction(raw).startswith("250")
            finally:
                raw.close()

        await asyncio.to_thread(session)
    first, second, third = (m.forwarded for m in processor.messages)
    assert first == XForward(
        name=None, addr="192.0.2.7", port=40512, proto="ESMTP", helo="mx+x.example", ident="4QF"
    )
    assert second is None and third is None
    # Our own peer is still the one relay and trust decisions see.
    assert processor.messages[0].peer_ip == "127.0.0.1"


def _send_through(port: int, *commands: str, subject: str = "hello") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        for command in commands:
            code, text = client.docmd(command)
            assert code == 250, text
        message = MESSAGE.replace(b"hello", subject.encode())
        client.sendmail("a@example.net", ["b@example.com"], message)


async def test_forwarded_client_is_logged_and_relayed_and_a_pooled_next_message_gets_its_own(
    tmp_path: Path,
):
    """Through the real pipeline: the message line logs client_addr, client_name and
    upstream_queue_id; the next hop gets them as XFORWARD; Received still names our peer;
    the next message on the same pooled connection (after RSET) carries its own client
    (our peer, our queue id), not the previous one's."""
    with running_sink(SinkBehaviour(xforward=XFORWARD_ALL)) as sink:
        config = make_config(
            tmp_path,
            downstream=sink.url,
            smtp={"xforward_networks": ["127.0.0.0/8"], "listen": "127.0.0.1:0", "timeout": 60},
        )
        pipeline = build_processor(config)
        with capture_logs() as logs:
            async with running_server(pipeline, config.smtp) as srv:
                await asyncio.to_thread(_send_through, srv.port, ORIGIN, ORIGIN_2, subject="one")
                await asyncio.to_thread(_send_through, srv.port, subject="two")
        first, second = sink.messages
        verbs = sink.verbs()
    lines = [e for e in logs if e.get("event") == "message"]
    assert lines[0]["client_addr"] == "192.0.2.7"
    assert lines[0]["client_name"] == "mx.origin.example"
    assert lines[0]["upstream_queue_id"] == "4QFRONT7"
    assert "client_addr" not in lines[1] and "upstream_queue_id" not in lines[1]
    assert first.forwarded == {
        "NAME": "mx.origin.example",
        "ADDR": "192.0.2.7",
        "PORT": "40512",
        "PROTO": "ESMTP",
        "HELO": "mx.origin.example",
        "IDENT": "4QFRONT7",
        "SOURCE": "REMOTE",
    }
    received = first.content.split(b"\r\n", 1)[0].decode()
    assert received.startswith("Received: from client.test ([127.0.0.1])"), received
    assert "192.0.2.7" not in received
    own = second.forwarded
    assert own["ADDR"] == "127.0.0.1" and own["HELO"] == "client.test"
    assert own["IDENT"] == lines[1]["queue_id"] and own["PROTO"] == "ESMTP"
    assert own["SOURCE"] == "REMOTE" and "NAME" not in own
    # One connection: EHLO once, RSET before the second transaction, XFORWARD after it.
    assert verbs.count("EHLO") == 1
    second_start = verbs.index("RSET")
    assert verbs[second_start : second_start + 3] == ["RSET", "XFORWARD", "MAIL"]


FORWARDED = XForward(
    name="mx.origin.example",
    addr="192.0.2.7",
    port=40512,
    proto="ESMTP",
    helo="mx=1+x",
    ident="4QFRONT7",
    source="REMOTE",
)


def _delivery(sink: NextHopSink) -> SmtpDelivery:
    return SmtpDelivery("127.0.0.1", sink.port, timeout=30.0, local_hostname="gw.test")


async def _deliver(sink: NextHopSink, **kwargs: Any) -> tuple[bool, list[Any]]:
    d = _delivery(sink)
    with capture_logs() as logs:
        result = await d.deliver("a@example.net", ["b@example.com"], MESSAGE, **kwargs)
    await d.aclose()
    return result.delivered, logs


async def test_a_next_hop_without_xforward_receives_no_xforward_command():
    """No XFORWARD in the next hop's EHLO: none is sent, and the message is delivered."""
    with running_sink(SinkBehaviour(xforward=None)) as sink:
        delivered, _ = await _deliver(sink, xforward=FORWARDED)
        verbs = sink.verbs()
    assert delivered
    assert "XFORWARD" not in verbs and "MAIL" in verbs


async def test_only_the_attributes_the_next_hop_offers_are_sent_xtext_encoded():
    """A next hop offering NAME ADDR HELO gets exactly those; '=' and '+' arrive intact."""
    with running_sink(SinkBehaviour(xforward="NAME ADDR HELO")) as sink:
        delivered, _ = await _deliver(sink, xforward=FORWARDED)
        lines = [line for line in sink.lines if line.startswith("XFORWARD")]
        (message,) = sink.messages
    assert delivered
    assert lines == ["XFORWARD NAME=mx.origin.example ADDR=192.0.2.7 HELO=mx+3D1+2Bx"]
    assert message.forwarded == {"NAME": "mx.origin.example", "ADDR": "192.0.2.7", "HELO": "mx=1+x"}


async def test_a_refused_xforward_is_logged_reset_and_the_message_delivered_without_it():
    """A 501 to XFORWARD: a warning is logged, RSET clears the next hop's state, and the
    message is delivered (250) with no forwarded attributes."""
    with running_sink(
        SinkBehaviour(xforward=XFORWARD_ALL, xforward_reply="501 5.5.4 Bad NAME syntax")
    ) as sink:
        delivered, logs = await _deliver(sink, xforward=FORWARDED)
        verbs = sink.verbs()
        (message,) = sink.messages
    assert delivered
    assert message.forwarded == {}
    assert verbs[verbs.index("XFORWARD") + 1 : verbs.index("MAIL")] == ["RSET"]
    (warning,) = [e for e in logs if e.get("event") == "xforward_refused"]
    assert warning["next_hop_reply"] == "501 5.5.4"


async def test_a_421_to_xforward_on_a_reused_connection_sends_the_message_on_a_fresh_one():
    """The next hop closes (421) at the second message's XFORWARD: nothing of it was
    delivered, so it goes again on a new connection, with its XFORWARD, and arrives."""
    with running_sink(SinkBehaviour(xforward=XFORWARD_ALL, xforward_421_on_reuse=True)) as sink:
        d = _delivery(sink)
        first = await d.deliver("a@example.net", ["b@example.com"], MESSAGE, xforward=FORWARDED)
        second = await d.deliver("a@example.net", ["c@example.com"], MESSAGE, xforward=FORWARDED)
        stats = d.pool.stats()
        await d.aclose()
        messages = list(sink.messages)
    assert first.delivered and second.delivered
    assert len(messages) == 2 and stats["created"] == 2
    assert messages[1].forwarded["IDENT"] == "4QFRONT7"


async def test_hundreds_of_xforward_commands_in_one_session_stay_within_the_call_budget():
    """A content filter connection carries many messages, each with XFORWARD: 300
    commands on one connection are all answered 250 (aiosmtpd's default budget would
    have closed it with 421 after 200)."""
    async with running_server(RecordingProcessor(), TRUSTED) as srv:

        def session() -> set[str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                _ehlo_lines(raw)
                return {raw.cmd(f"XFORWARD IDENT=Q{i}") for i in range(300)}
            finally:
                raw.close()

        answers = await asyncio.to_thread(session)
    assert answers == {str(replies.OK)}
