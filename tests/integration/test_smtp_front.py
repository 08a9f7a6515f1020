"""The SMTP front over real sockets: banner, envelope policy, limits, errors, hand-off."""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import socket
import time

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from gateway import replies
from gateway.smtp._handler import RCPT_OVERSHOOT

from .smtp_front_support import RawClient, RecordingProcessor, running_server, smtp_config

# The front's behaviour on both loops `[smtp] event_loop` offers (tests/conftest.py).
pytestmark = pytest.mark.both_loops

MESSAGE = (
    b"From: Alice <alice@example.net>\r\n"
    b"To: Triage <triage@example.com>\r\n"
    b"Subject: Invoice INV-2041 overdue\r\n"
    b"\r\n"
    b"Please pay.\r\n"
    b".A line that starts with a dot\r\n"
)


def _send(
    port: int,
    mail_from: str = "alice@example.net",
    rcpts: tuple[str, ...] = ("triage@example.com",),
    body: bytes = MESSAGE,
    options: tuple[str, ...] = (),
) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        code, text = client.mail(mail_from, list(options))
        assert code == 250, text
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            assert code == 250, text
        return client.data(body)


async def test_banner_names_host_and_ident_and_ehlo_advertises_extensions():
    """The banner is '220 <smtp.hostname> cm-gateway ESMTP'; EHLO offers SIZE, 8BITMIME,
    SMTPUTF8 and neither STARTTLS nor AUTH when TLS is not configured."""
    async with running_server(RecordingProcessor(), smtp_config(max_message_size=1234)) as srv:

        def banner_and_ehlo() -> tuple[str, str]:
            raw = RawClient(srv.port)
            try:
                banner = raw.reply()
                assert "DATA" in raw.cmd("HELP")
                raw.send(b"EHLO client.test\r\n")
                lines = []
                while True:
                    line = raw.sock.recv(4096).decode()
                    lines.append(line)
                    if re.search(r"^250 ", "".join(lines), re.M):
                        return banner, "".join(lines)
            finally:
                raw.close()

        banner, ehlo = await asyncio.to_thread(banner_and_ehlo)
    assert banner == "220 gw.test cm-gateway ESMTP"
    assert "250-SIZE 1234" in ehlo
    assert "8BITMIME" in ehlo
    assert "SMTPUTF8" in ehlo
    assert "STARTTLS" not in ehlo
    assert "AUTH" not in ehlo


async def test_message_reaches_processor_with_envelope_and_queue_id_in_reply():
    """One accepted message becomes one InboundMessage (CRLF, dot-unstuffed, envelope,
    peer, HELO, queue id) and the processor's reply is sent to the client verbatim."""
    processor = RecordingProcessor()
    async with running_server(processor) as srv:
        code, text = await asyncio.to_thread(
            _send, srv.port, rcpts=("triage@example.com", "ops@example.com"),
            options=("BODY=8BITMIME",),
        )  # fmt: skip
    assert len(processor.messages) == 1
    msg = processor.messages[0]
    assert (code, text.decode()) == (250, f"2.0.0 Ok: queued as {msg.queue_id}")
    assert re.fullmatch(r"[0-9A-F]{12}", msg.queue_id)
    assert msg.mail_from == "alice@example.net"
    assert msg.rcpt_tos == ("triage@example.com", "ops@example.com")
    assert msg.content == MESSAGE
    assert msg.peer_ip == "127.0.0.1"
    assert msg.helo == "client.test"
    assert msg.mail_options == ("BODY=8BITMIME",)
    assert (msg.tls, msg.authenticated_user, msg.smtp_utf8) == (False, None, False)
    assert msg.trusted_peer is False  # trusted_networks is empty by default
    assert abs(msg.received_at - time.time()) < 30


async def test_null_sender_is_accepted_as_empty_mail_from():
    """MAIL FROM:<> (bounces) is accepted and reaches the processor as mail_from ''."""
    processor = RecordingProcessor()
    async with running_server(processor) as srv:
        code, _ = await asyncio.to_thread(_send, srv.port, mail_from="<>")
    assert code == 250
    assert processor.messages[0].mail_from == ""


async def test_untrusted_peer_to_foreign_domain_is_denied_and_relay_domain_accepted():
    """A peer outside relay_networks gets 554 5.7.1 at RCPT for a foreign domain (no open
    relay), is accepted for a relay_domain (case-insensitive), and a subdomain of an
    exact relay_domain is refused while a '.parent' entry accepts subdomains."""
    config = smtp_config(
        relay_networks=["10.0.0.0/8"], relay_domains=["Example.COM", ".example.org"]
    )
    processor = RecordingProcessor()
    async with running_server(processor, config) as srv:

        def talk() -> list[str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                out = [raw.cmd("MAIL FROM:<spammer@elsewhere.test>")]
                for rcpt in (
                    "victim@foreign.test",
                    "triage@EXAMPLE.com",
                    "x@sub.example.com",
                    "y@deep.sub.example.org",
                    "z@example.org",
                    "postmaster",
                ):
                    out.append(raw.cmd(f"RCPT TO:<{rcpt}>"))
                return out
            finally:
                raw.close()

        out = await asyncio.to_thread(talk)
    denied = str(replies.RELAY_DENIED)
    assert out == ["250 2.1.0 Ok", denied, "250 2.1.5 Ok", denied, "250 2.1.5 Ok", denied, denied]


async def test_relay_network_peer_may_relay_to_any_domain():
    """A peer inside relay_networks (loopback here) may send to any domain."""
    processor = RecordingProcessor()
    async with running_server(processor, smtp_config(relay_domains=[])) as srv:
        code, _ = await asyncio.to_thread(_send, srv.port, rcpts=("anyone@foreign.test",))
    assert code == 250
    assert processor.messages[0].rcpt_tos == ("anyone@foreign.test",)


async def test_peer_outside_trusted_networks_is_marked_untrusted():
    """trusted_peer is False when the peer is not in trusted_networks (the pipeline then
    strips X-CM-* headers), even though it may relay."""
    processor = RecordingProcessor()
    config = smtp_config(trusted_networks=["192.0.2.0/24"])
    async with running_server(processor, config) as srv:
        await asyncio.to_thread(_send, srv.port)
    assert processor.messages[0].trusted_peer is False


async def test_peer_inside_trusted_networks_is_marked_trusted():
    """A peer listed in trusted_networks (another gateway) keeps its X-CM-* verdicts."""
    processor = RecordingProcessor()
    async with running_server(processor, smtp_config(trusted_networks=["127.0.0.0/8"])) as srv:
        await asyncio.to_thread(_send, srv.port)
    assert processor.messages[0].trusted_peer is True


async def test_recipients_over_max_recipients_get_452():
    """Past max_recipients in one transaction, RCPT gets 452 4.5.3; the rest is kept."""
    processor = RecordingProcessor()
    async with running_server(processor, smtp_config(max_recipients=2)) as srv:

        def talk() -> tuple[list[str], str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                raw.cmd("MAIL FROM:<a@example.net>")
                out = [raw.cmd(f"RCPT TO:<r{i}@example.com>") for i in range(3)]
                raw.cmd("DATA")
                return out, raw.cmd(b"Subject: x\r\n\r\nhi\r\n.\r\n")
            finally:
                raw.close()

        out, data_reply = await asyncio.to_thread(talk)
    assert out[2] == str(replies.TOO_MANY_RECIPIENTS)
    assert data_reply.startswith("250 2.0.0")
    assert processor.messages[0].rcpt_tos == ("r0@example.com", "r1@example.com")


async def test_size_over_limit_is_refused_at_mail_and_after_data_with_552_5_3_4():
    """SIZE= above max_message_size gets 552 5.3.4 at MAIL FROM, and an oversized DATA
    gets exactly the same reply (not aiosmtpd's own wording); nothing is processed."""
    processor = RecordingProcessor()
    async with running_server(processor, smtp_config(max_message_size=1000)) as srv:

        def talk() -> tuple[str, str, str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                at_mail = raw.cmd("MAIL FROM:<a@example.net> SIZE=1001")
                raw.cmd("MAIL FROM:<a@example.net> SIZE=999")
                raw.cmd("RCPT TO:<b@example.com>")
                raw.cmd("DATA")
                after_data = raw.cmd(
                    b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20 + b".\r\n"
                )
                noop = raw.cmd("NOOP")
                return at_mail, after_data, noop
            finally:
                raw.close()

        at_mail, after_data, noop = await asyncio.to_thread(talk)
    assert at_mail == str(replies.TOO_BIG) == "552 5.3.4 Message size exceeds limit"
    assert after_data == str(replies.TOO_BIG)
    assert noop.startswith("250")
    assert processor.messages == []


async def test_processor_exception_is_answered_451_without_its_text():
    """An exception in the processor gives 451 4.3.0 Internal error: never a 5xx, never
    the exception text, and the log names only the exception type."""
    processor = RecordingProcessor(error=RuntimeError("classifier exploded: secret-token-123"))
    async with running_server(processor) as srv:
        with capture_logs() as logs:
            code, text = await asyncio.to_thread(_send, srv.port)
    assert f"{code} {text.decode()}" == str(replies.INTERNAL_ERROR)
    errors = [e for e in logs if e["event"] == "processor_error"]
    assert errors and errors[0]["error_type"] == "RuntimeError"
    assert "secret-token-123" not in repr(logs)


async def test_handle_exception_answers_451_and_logs_no_message():
    """The aiosmtpd handle_exception hook (errors outside DATA) answers 451 4.3.0 and
    logs the type only, never aiosmtpd's default '500 Error: (Type) text'."""
    async with running_server(RecordingProcessor()) as srv:
        with capture_logs() as logs:
            status = await srv.handler.handle_exception(ValueError("password=hunter2"))
    assert status == str(replies.INTERNAL_ERROR)
    assert logs[0]["error_type"] == "ValueError"
    assert "hunter2" not in repr(logs)


async def test_slow_processor_is_cut_at_the_deadline_with_451_before_the_idle_timeout():
    """A processor slower than the deadline (smtp.timeout minus a margin) is answered
    451 while the client is still connected, instead of aiosmtpd dropping the session."""
    processor = RecordingProcessor(delay=10.0)
    async with running_server(processor, smtp_config(timeout=2)) as srv:

        def talk() -> tuple[str, str, float]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                raw.cmd("MAIL FROM:<a@example.net>")
                raw.cmd("RCPT TO:<b@example.com>")
                raw.cmd("DATA")
                start = time.monotonic()
                reply = raw.cmd(b"Subject: slow\r\n\r\nhi\r\n.\r\n")
                elapsed = time.monotonic() - start
                return reply, raw.cmd("NOOP"), elapsed
            finally:
                raw.close()

        reply, noop, elapsed = await asyncio.to_thread(talk)
    assert reply == str(replies.PROCESSING_TIMEOUT)
    assert noop.startswith("250")
    assert 1.0 < elapsed < 2.0


async def test_smtputf8_address_is_accepted_and_flag_carried():
    """A non-ASCII address with MAIL ... SMTPUTF8 is accepted and smtp_utf8 is set;
    without SMTPUTF8 a non-ASCII address is refused with 553 5.6.7."""
    processor = RecordingProcessor()
    async with running_server(processor) as srv:

        def talk() -> tuple[str, str, str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                plain = raw.cmd("MAIL FROM:<jörg@bücher.example>")
                raw.cmd("RSET")
                raw.cmd("MAIL FROM:<jörg@bücher.example> SMTPUTF8")
                raw.cmd("RCPT TO:<zoë@example.com>")
                raw.cmd("DATA")
                data = raw.cmd("Subject: grüße\r\n\r\nhällo\r\n.\r\n".encode())
                raw.cmd("MAIL FROM:<a@example.net>")
                no_utf8 = raw.cmd("RCPT TO:<zoë@example.com>")
                return plain, data, no_utf8
            finally:
                raw.close()

        plain, data, no_utf8 = await asyncio.to_thread(talk)
    assert plain == str(replies.SMTPUTF8_REQUIRED)
    assert data.startswith("250 2.0.0")
    assert no_utf8 == str(replies.SMTPUTF8_REQUIRED)
    msg = processor.messages[0]
    assert (msg.mail_from, msg.rcpt_tos, msg.smtp_utf8) == (
        "jörg@bücher.example",
        ("zoë@example.com",),
        True,
    )
    assert msg.content == "Subject: grüße\r\n\r\nhällo\r\n".encode()


async def test_invalid_utf8_address_is_refused_not_crashing():
    """An address with bytes that are not UTF-8 is refused with a 5xx syntax reply."""
    async with running_server(RecordingProcessor()) as srv:

        def talk() -> tuple[str, str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                mail = raw.cmd(b"MAIL FROM:<a\xff@example.net> SMTPUTF8\r\n")
                raw.cmd("MAIL FROM:<a@example.net> SMTPUTF8")
                rcpt = raw.cmd(b"RCPT TO:<b\xfe@example.com>\r\n")
                return mail, rcpt
            finally:
                raw.close()

        mail, rcpt = await asyncio.to_thread(talk)
    assert mail == str(replies.BAD_SENDER_SYNTAX)
    assert rcpt == str(replies.BAD_RECIPIENT_SYNTAX)


async def test_connections_over_max_connections_get_421_and_are_closed():
    """With max_connections=2, a third client gets '421 4.7.0 Too many connections' and
    is disconnected; once a slot frees up a new client is served again."""
    async with running_server(RecordingProcessor(), smtp_config(max_connections=2)) as srv:

        def talk() -> tuple[str, bytes, str]:
            first, second = RawClient(srv.port), RawClient(srv.port)
            try:
                first.reply()
                second.reply()
                third = RawClient(srv.port)
                refused = third.reply()
                tail = third.sock.recv(100)  # b"" once the server closed it
                third.close()
                first.cmd("QUIT")
                first.close()
                deadline = time.monotonic() + 5
                while True:
                    fourth = RawClient(srv.port)
                    banner = fourth.reply()
                    fourth.close()
                    if banner.startswith("220") or time.monotonic() > deadline:
                        return refused, tail, banner
                    time.sleep(0.05)
            finally:
                second.close()

        refused, tail, banner = await asyncio.to_thread(talk)
    assert refused == str(replies.TOO_MANY_CONNECTIONS)
    assert tail == b""
    assert banner.startswith("220 gw.test")


async def test_log_lines_carry_session_and_queue_id_bound_per_connection():
    """Log events of a transaction carry session_id, peer and the transaction's queue_id
    (structlog contextvars), and two connections get different session ids."""
    processor = RecordingProcessor()
    async with running_server(processor) as srv:
        with capture_logs(processors=[merge_contextvars]) as logs:
            await asyncio.to_thread(_send, srv.port)
            await asyncio.to_thread(_send, srv.port)
    done = [e for e in logs if e["event"] == "message_done"]
    assert [e["queue_id"] for e in done] == [m.queue_id for m in processor.messages]
    assert all(e["peer"] == "127.0.0.1" for e in done)
    assert done[0]["session_id"] != done[1]["session_id"]
    assert "alice@example.net" not in repr(done)


async def test_shutdown_lets_data_in_progress_finish_and_closes_idle_sessions():
    """aclose(): an idle session gets 421 4.3.2 at once; a session whose message is
    being processed gets its 250 first, then 421 4.3.2; the processor is closed; no new
    connection is accepted."""
    processor = RecordingProcessor(delay=1.0)
    async with running_server(processor) as srv:
        port = srv.port
        idle = await asyncio.to_thread(RawClient, port)
        await asyncio.to_thread(idle.reply)

        def busy_client() -> tuple[str, str]:
            raw = RawClient(port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                raw.cmd("MAIL FROM:<a@example.net>")
                raw.cmd("RCPT TO:<b@example.com>")
                raw.cmd("DATA")
                return raw.cmd(b"Subject: slow\r\n\r\nhi\r\n.\r\n"), raw.reply()
            finally:
                raw.close()

        busy = asyncio.ensure_future(asyncio.to_thread(busy_client))
        await asyncio.wait_for(processor.started.wait(), 5)
        await srv.aclose(grace=5.0)
        data_reply, after = await busy
        idle_reply = await asyncio.to_thread(idle.reply)
        idle.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert data_reply.startswith("250 2.0.0 Ok: queued as")
    assert after == str(replies.SHUTTING_DOWN)
    assert idle_reply == str(replies.SHUTTING_DOWN)
    assert processor.closed


async def test_abort_drain_cuts_a_long_shutdown_short():
    """abort_drain() (a second SIGTERM) ends aclose() at once even though a message is
    still being processed: its connection is dropped (no reply, so the client retries)."""
    processor = RecordingProcessor(delay=30.0)
    async with running_server(processor) as srv:
        port = srv.port

        def busy_client() -> str:
            raw = RawClient(port, timeout=20)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                raw.cmd("MAIL FROM:<a@example.net>")
                raw.cmd("RCPT TO:<b@example.com>")
                raw.cmd("DATA")
                try:
                    return raw.cmd(b"Subject: slow\r\n\r\nhi\r\n.\r\n")
                except ConnectionError:
                    return "closed"
            finally:
                raw.close()

        busy = asyncio.ensure_future(asyncio.to_thread(busy_client))
        await asyncio.wait_for(processor.started.wait(), 5)
        start = time.monotonic()
        closing = asyncio.ensure_future(srv.aclose(grace=30.0))
        await asyncio.sleep(0.2)
        assert not closing.done()
        srv.abort_drain()
        await asyncio.wait_for(closing, 5)
        assert time.monotonic() - start < 5
        assert await busy == "closed"
    assert processor.closed


async def test_repeated_ehlo_does_not_raise_the_mail_command_line_limit():
    """aiosmtpd adds 36 octets to MAIL's line budget on every EHLO (in a dict shared by all
    connections); ours stays at 512 + SIZE + SMTPUTF8, however many EHLOs came before."""
    async with running_server(RecordingProcessor()) as srv:

        def talk() -> tuple[str, str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                for _ in range(5):
                    raw.cmd("EHLO client.test")
                long_mail = raw.cmd("MAIL FROM:<" + "a" * 560 + "@example.net>")
                other = RawClient(srv.port)
                try:
                    other.reply()
                    other.cmd("EHLO other.test")
                    ok_mail = other.cmd("MAIL FROM:<" + "b" * 480 + "@example.net>")
                finally:
                    other.close()
                return long_mail, ok_mail
            finally:
                raw.close()

        long_mail, ok_mail = await asyncio.to_thread(talk)
    assert long_mail == str(replies.COMMAND_TOO_LONG)
    assert ok_mail.startswith("250")


async def test_unparseable_mail_and_rcpt_paths_are_malformed_addresses_not_internal_errors():
    """Paths the stdlib address parser crashes on ("<", "a@[") get the malformed-address
    reply (553 5.1.3), not 451 and an error log; the session goes on."""
    async with running_server(RecordingProcessor()) as srv:

        def talk() -> list[str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                out = [raw.cmd("MAIL FROM:<"), raw.cmd("MAIL FROM:a@[")]
                out.append(raw.cmd("MAIL FROM:<alice@example.com> SIZE=100"))
                out += [raw.cmd("RCPT TO:<"), raw.cmd("RCPT TO:<bob@example.com>")]
                return out
            finally:
                raw.close()

        replies_seen = await asyncio.to_thread(talk)
    assert [r[:9] for r in replies_seen] == ["553 5.1.3"] * 2 + ["250 2.1.0"] + [
        "553 5.1.3",
        "250 2.1.5",
    ]


async def test_connections_the_client_drops_at_once_free_their_slots():
    """40 connections opened and closed at once (before or while the banner is written):
    every slot is released, so the next client is greeted, not told 421 4.7.0."""
    async with running_server(RecordingProcessor(), smtp_config(max_connections=20)) as srv:

        def flood() -> None:
            socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(40)]
            for s in socks:
                s.close()

        await asyncio.to_thread(flood)
        tracker = srv.tracker
        for _ in range(200):  # up to 10 s: the accepts and closes are seen asynchronously
            # Every one of the 40 taken (or refused) first: an empty set before that may
            # only mean the rest still wait in the listen queue, to take slots later.
            if tracker.accepted + tracker.refused == 40 and not tracker.live:
                break
            await asyncio.sleep(0.05)
        assert tracker.accepted + tracker.refused == 40 and not tracker.live
        banner = await asyncio.to_thread(lambda: RawClient(srv.port).reply())
    assert banner.startswith("220")


async def test_a_shutdown_while_an_overshooting_client_lingers_closes_it_at_once():
    """A session closed for too many RCPTs (421 4.5.3) reads and drops the rest of the
    client's pipelined input for a while before it closes; a shutdown in that window
    closes it at once, without a second goodbye and without an error in the shutdown."""
    loop = asyncio.get_running_loop()
    async with running_server(RecordingProcessor(), smtp_config(max_recipients=1)) as srv:

        def overshoot() -> RawClient:
            client = RawClient(srv.port)
            client.reply()  # the banner
            rcpts = [b"RCPT TO:<r%d@example.com>" % i for i in range(2 + RCPT_OVERSHOOT)]
            script = [b"EHLO c.test", b"MAIL FROM:<a@example.net>", *rcpts]
            client.sock.sendall(b"\r\n".join(script) + b"\r\n")
            return client

        client = await asyncio.to_thread(overshoot)
        for _ in range(200):  # up to 2 s for the session to reach its lingering close
            if any(conn.lingering for conn in srv.tracker.live):
                break
            await asyncio.sleep(0.01)
        assert any(conn.lingering for conn in srv.tracker.live)
        started = loop.time()
        await srv.aclose(grace=5.0)
        took = loop.time() - started
        assert not srv.tracker.live

    def replies_until_closed() -> list[str]:
        seen: list[str] = []
        with contextlib.suppress(ConnectionError):  # reply() raises it at the close
            while True:
                seen.append(client.reply())
        client.close()
        return seen

    seen = await asyncio.to_thread(replies_until_closed)
    assert took < 1.0  # not the linger's LINGER_SECONDS
    assert seen[-1] == str(replies.TOO_MANY_RECIPIENTS_CLOSING)
    assert str(replies.SHUTTING_DOWN) not in seen
