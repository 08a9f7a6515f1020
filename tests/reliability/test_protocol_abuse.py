"""Protocol abuse (issue 6 item 3): smuggling, early talkers, STARTTLS tricks, long lines,
10,000 RCPTs, connection floods, slowloris, and the memory the gateway keeps afterwards.

Most cases run against one real ``cm-gateway serve`` process (in-process emulator model,
a recording SMTP sink as next hop); the STARTTLS and timeout cases need a TLS listener or
a short ``smtp.timeout`` and use the in-process server of the SMTP front tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import replies
from gateway.mail import find_bare_line_ending
from gateway.smtp._handler import RCPT_OVERSHOOT
from gateway.testing import NextHopSink, SinkBehaviour

from ..integration.smtp_front_support import (
    RawClient,
    RecordingProcessor,
    client_tls_context,
    make_self_signed_cert,
    running_server,
    smtp_config,
)
from .abuse_support import GatewayProcess, read_all, running_gateway, send_message, toml_config

MAX_CONNECTIONS = 20
MAX_RECIPIENTS = 100  # RFC 5321 §4.5.3.1.8: the least a server may accept
EVIL = b"evil@attacker.test"
# SEC Consult's SMTP smuggling research (2023) and its follow-ups: every end-of-data
# spelling some server accepts other than <CR><LF>.<CR><LF>, plus NUL and stuffed-dot ones.
# The value is the documented reply with bare_lf = "reject" (None: delivered as ONE message).
TRICKS: dict[str, tuple[bytes, replies.Reply | None]] = {
    "LF.LF": (b"\n.\n", replies.BARE_LF),
    "CR.CR": (b"\r.\r", replies.BARE_CR),
    "LF.CRLF": (b"\n.\r\n", replies.BARE_LF),
    "CRLF.LF": (b"\r\n.\n", replies.BARE_LF),
    "CRLF.CR": (b"\r\n.\r", replies.BARE_CR),
    "CR.CRLF": (b"\r.\r\n", replies.BARE_CR),
    "LF.CR": (b"\n.\r", replies.BARE_LF),
    "CR.LF": (b"\r.\n", replies.BARE_LF),
    "CRLF.CRCRLF": (b"\r\n.\r\r\n", replies.BARE_CR),
    "CRLF.LFCRLF": (b"\r\n.\n\r\n", replies.BARE_LF),
    "CRLF-NUL.CRLF": (b"\r\n\x00.\r\n", None),
    "CRLF.NUL-CRLF": (b"\r\n.\x00\r\n", None),
    "CRLF-SP.CRLF": (b"\r\n .\r\n", None),
    "CRLF.SP-CRLF": (b"\r\n. \r\n", None),
    "stuffed-dot-line": (b"\r\n..\r\n", None),  # a real "." line in the content
}
# RFC 5321 §4.5.2: a leading dot is removed from every line, so ".<NUL>" arrives as "<NUL>".
UNSTUFFED = {"CRLF.NUL-CRLF": b"\r\n\x00\r\n", "CRLF.SP-CRLF": b"\r\n \r\n"}
HELLO = ["220 gw.abuse.test cm-gateway ESMTP", "250 HELP", "250 2.1.0 Ok", "250 2.1.5 Ok"]
SMUGGLED = (
    b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
    b"From: evil@attacker.test\r\nSubject: smuggled\r\n\r\nSMUGGLED\r\n"
)
NORMAL = (
    b"From: Alice <alice@example.net>\r\nTo: triage@example.com\r\n"
    b"Subject: Invoice INV-12345\r\n\r\nPlease pay invoice INV-12345.\r\n"
)


@dataclass
class Stack:
    """The sink and the gateway process shared by this module's tests."""

    sink: NextHopSink
    gateway: GatewayProcess
    rss_start_kib: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A ``cm-gateway serve`` subprocess (emulator model, max_connections 20) + sink."""
    tmp = tmp_path_factory.mktemp("abuse")
    (tmp / "rules.yaml").write_text("rules: []\n", encoding="utf-8")
    sink = NextHopSink(SinkBehaviour(smtputf8=False)).start()
    config = toml_config(
        {
            "smtp": {
                "listen": "127.0.0.1:0",
                "hostname": "gw.abuse.test",
                "timeout": 120,
                "max_connections": MAX_CONNECTIONS,
                "max_recipients": MAX_RECIPIENTS,
            },
            "downstream": {"url": f"smtp://127.0.0.1:{sink.port}", "timeout": 30},
            "classifier": {"provider": "emulator", "max_wait_ms": 0},
            "rules": {"files": [str(tmp / "rules.yaml")]},
            "metrics": {"listen": ""},
            "log": {"level": "info", "format": "json"},
        }
    )
    try:
        with running_gateway(tmp, config) as gateway:
            assert send_message(gateway.port, NORMAL).startswith("250 2.0.0")  # warm up
            yield Stack(sink, gateway, gateway.rss_kib())
            log = gateway.log_text()
            assert "Traceback" not in log and "smtp_session_error" not in log
    finally:
        sink.stop()


def _lines(data: bytes) -> list[str]:
    """Final lines of each reply in ``data`` (continuation lines ``250-`` dropped)."""
    out = []
    for line in data.decode("utf-8", "replace").split("\r\n"):
        if len(line) >= 4 and line[3] == "-":
            continue
        if line:
            out.append(line)
    return out


def _session(port: int, script: bytes, *, quiet: float = 1.5) -> list[str]:
    """Send ``script`` in one write right after connecting; every reply until closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(script)
        return _lines(read_all(sock, quiet=quiet))


def _no_evil(sink: NextHopSink) -> bool:
    return all(m.mail_from.encode() != EVIL for m in sink.messages)


# -- smuggling ----------------------------------------------------------------------


def _smuggle(port: int, name: str, trick: bytes) -> list[str]:
    """One transaction whose body hides a second one behind ``trick``; then NOOP, QUIT."""
    head = f"From: alice@example.net\r\nSubject: trick {name}\r\nMessage-ID: <{name}@t>\r\n\r\n"
    script = (
        b"EHLO client.test\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<b@example.com>\r\n"
        b"DATA\r\n" + head.encode() + b"Testing" + trick + SMUGGLED + b".\r\nNOOP\r\nQUIT\r\n"
    )
    return _session(port, script)


@pytest.mark.parametrize("name", list(TRICKS))
def test_smuggling_end_of_data_trick_is_one_transaction_refused_or_delivered_whole(
    stack: Stack, name: str
) -> None:
    """A hidden end of data never ends DATA: one reply (5.6.11 for bare CR/LF, else one
    delivered message carrying the would-be commands as text), NOOP answered in step."""
    trick, refused_with = TRICKS[name]
    replies_seen = _smuggle(stack.gateway.port, name, trick)
    assert replies_seen[:4] == HELLO
    assert replies_seen[4].startswith("354")
    data_reply = replies_seen[5]
    assert replies_seen[6:] == ["250 OK", "221 Bye"]  # no reply for a smuggled command
    if refused_with is not None:
        assert data_reply == str(refused_with)
    else:
        assert data_reply.startswith("250 2.0.0 Ok: queued as ")
        queue_id = data_reply.rsplit(" ", 1)[1].encode()
        (got,) = stack.sink.wait_for(1, where=lambda m: b"id " + queue_id in m.data, timeout=30)
        delivered_trick = UNSTUFFED.get(name, trick.replace(b"\r\n..", b"\r\n."))
        assert got.data.endswith(b"Testing" + delivered_trick + SMUGGLED)
    assert _no_evil(stack.sink)


async def test_smuggling_tricks_in_normalize_mode_stay_one_crlf_message_each() -> None:
    """bare_lf=normalize: every trick yields exactly one message, CRLF only, with the
    smuggled lines as its text; the NOOP after it is answered in step."""
    processor = RecordingProcessor()
    async with running_server(processor, smtp_config(bare_lf="normalize")) as srv:
        for name, (trick, _) in TRICKS.items():
            seen = await asyncio.to_thread(_smuggle, srv.port, name, trick)
            assert seen[5].startswith("250 2.0.0") and seen[6:] == ["250 OK", "221 Bye"], name
    assert len(processor.messages) == len(TRICKS)
    for msg in processor.messages:
        assert find_bare_line_ending(msg.content) is None
        assert msg.content.endswith(SMUGGLED)
        assert msg.content.count(b"SMUGGLED") == 1
        assert msg.mail_from == "alice@example.net"


def test_bdat_is_not_offered_and_a_bdat_chunk_delivers_nothing(stack: Stack) -> None:
    """CHUNKING is not advertised; BDAT gets a 5xx and its chunk never becomes a message."""
    chunk = b"Subject: bdat\r\n\r\nSMUGGLED-BDAT\r\n"
    script = (
        b"EHLO client.test\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<b@example.com>\r\n"
        + f"BDAT {len(chunk)} LAST\r\n".encode()
        + chunk
        + b"NOOP\r\nQUIT\r\n"
    )
    with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=60) as sock:
        sock.sendall(script)
        raw = read_all(sock, quiet=1.5)
    assert b"CHUNKING" not in raw
    seen = _lines(raw)
    assert seen[4].startswith("500")  # BDAT: not a command here
    assert seen[-2:] == ["250 OK", "221 Bye"]
    assert not any(b"SMUGGLED-BDAT" in m.data for m in stack.sink.messages)


# -- sequencing ---------------------------------------------------------------------


def test_early_talker_commands_sent_before_the_greeting_are_answered_in_order(
    stack: Stack,
) -> None:
    """A client that sends its whole session before the banner gets every reply, in
    order, once; the message is delivered once (what Postfix smtpd does without postscreen)."""
    script = (
        b"EHLO early.test\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<b@example.com>\r\n"
        b"DATA\r\nSubject: early talker\r\nMessage-ID: <early@t>\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    seen = _session(stack.gateway.port, script)
    assert seen[:4] == [
        "220 gw.abuse.test cm-gateway ESMTP",
        "250 HELP",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
    ]
    assert seen[4].startswith("354") and seen[5].startswith("250 2.0.0 Ok: queued as ")
    assert seen[6:] == ["221 Bye"]
    assert len(stack.sink.wait_for(1, where=lambda m: b"<early@t>" in m.data)) == 1


def test_starttls_without_tls_is_refused_and_the_plain_session_goes_on(stack: Stack) -> None:
    """No TLS configured: STARTTLS is answered 454 and later commands still work."""
    seen = _session(stack.gateway.port, b"EHLO c.test\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n")
    assert seen[2].startswith("454") and seen[3:] == ["250 OK", "221 Bye"]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost."""
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


def _tls_config(cert: tuple[Path, Path]) -> object:
    return smtp_config(tls_cert_file=str(cert[0]), tls_key_file=str(cert[1]))


async def test_commands_pipelined_behind_starttls_are_discarded_and_state_is_reset(
    cert: tuple[Path, Path],
) -> None:
    """CVE-2011-0411 style: a MAIL sent in plaintext behind STARTTLS is never executed,
    and after the handshake the session starts over (RFC 3207 §4.2: EHLO first)."""
    processor = RecordingProcessor()
    async with running_server(processor, _tls_config(cert)) as srv:  # type: ignore[arg-type]

        def talk() -> list[str]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                raw.send(b"STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n")
                assert raw.reply().startswith("220")
                context = client_tls_context(cert[0])
                raw.sock = context.wrap_socket(raw.sock, server_hostname="localhost")
                raw.buf = b""
                return [
                    raw.cmd("MAIL FROM:<a@example.net>"),  # no EHLO since TLS yet
                    raw.cmd("EHLO client.test"),
                    raw.cmd("RCPT TO:<b@example.com>"),  # the injected MAIL did not run
                    raw.cmd("NOOP"),
                ]
            finally:
                raw.close()

        seen = await asyncio.to_thread(talk)
    assert seen[0].startswith("503")
    assert seen[1].startswith("250")
    assert seen[2].startswith("503")
    assert seen[3] == "250 OK"
    assert processor.messages == []


async def test_plaintext_commands_after_a_failed_starttls_get_no_answer(
    cert: tuple[Path, Path],
) -> None:
    """After '220 Ready to start TLS', a client that goes on in plaintext gets no SMTP
    reply at all (the handshake fails, the connection is closed), nothing is processed."""
    processor = RecordingProcessor()
    async with running_server(processor, _tls_config(cert)) as srv:  # type: ignore[arg-type]

        def talk() -> bytes:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                assert raw.cmd("STARTTLS").startswith("220")
                raw.send(
                    b"EHLO client.test\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>"
                    b"\r\nDATA\r\nSubject: x\r\n\r\nplain\r\n.\r\n"
                )
                return read_all(raw.sock, quiet=3.0)
            finally:
                raw.close()

        tail = await asyncio.to_thread(talk)
    assert b"250" not in tail and b"354" not in tail and b"500" not in tail
    assert processor.messages == []


# -- sizes and counts ---------------------------------------------------------------


def test_overlong_command_lines_get_500_5_5_2_and_the_session_goes_on(stack: Stack) -> None:
    """Command lines over 512 octets (600, 3,000 and 100,000 octets) get 500 5.5.2 each;
    the session stays usable."""
    script = (
        b"EHLO c.test\r\nNOOP " + b"a" * 600 + b"\r\nMAIL FROM:<" + b"a" * 3000 + b"@x.test>\r\n"
        + b"X" * 100_000 + b"\r\nNOOP\r\nQUIT\r\n"
    )  # fmt: skip
    seen = _session(stack.gateway.port, script)
    assert seen[2:] == [str(replies.COMMAND_TOO_LONG)] * 3 + ["250 OK", "221 Bye"]


def test_data_line_over_1_mib_is_refused_554_5_6_0_and_a_5000_octet_line_is_relayed_intact(
    stack: Stack,
) -> None:
    """A message line over 1 MiB refuses that message (554 5.6.0, nothing relayed); a
    5,000-octet line (past RFC 5322's 998, accepted by Postfix) is relayed unchanged, and
    the same session goes on."""
    txn = b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    huge = b"w" * ((1 << 20) + 1024)
    script = (
        b"EHLO c.test\r\n" + txn + b"Subject: huge\r\n\r\n" + huge + b"\r\n.\r\n"
        + txn + b"Subject: long\r\nMessage-ID: <long-line@t>\r\n\r\n" + b"y" * 5000
        + b"\r\n.\r\nQUIT\r\n"
    )  # fmt: skip
    seen = _session(stack.gateway.port, script)
    assert seen[4].startswith("354") and seen[5] == str(replies.DATA_LINE_TOO_LONG)
    assert seen[9].startswith("250 2.0.0 Ok: queued as ") and seen[10:] == ["221 Bye"]
    assert stack.sink.wait_for(1, where=lambda m: b"<long-line@t>" in m.data)
    delivered = [m.data for m in stack.sink.messages if b"<long-line@t>" in m.data]
    assert delivered[0].endswith(b"\r\n\r\n" + b"y" * 5000 + b"\r\n")
    assert not any(huge in m.data for m in stack.sink.messages)


def _send_ignoring_close(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closed the connection: the point
        sock.sendall(data)


def test_ten_thousand_rcpts_are_cut_off_after_the_overshoot_allowance(stack: Stack) -> None:
    """10,000 pipelined RCPTs: max_recipients (100) get 250, the next RCPT_OVERSHOOT (100)
    452 4.5.3, then one 421 4.5.3 and the connection is closed; nothing is delivered."""
    rcpts = b"".join(f"RCPT TO:<r{i}@example.com>\r\n".encode() for i in range(10_000))
    script = (
        b"EHLO c.test\r\nMAIL FROM:<alice@example.net>\r\n" + rcpts + b"DATA\r\n"
        b"Subject: many\r\nMessage-ID: <many-rcpts@t>\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=120) as sock:
        # Write from another thread: the replies would fill the socket buffers while we
        # were still sending, and both ends would wait for each other.
        writer = threading.Thread(target=_send_ignoring_close, args=(sock, script))
        writer.start()
        seen = _lines(read_all(sock, quiet=30.0, limit=300.0))
        writer.join(timeout=60)
    assert seen[3:] == (
        ["250 2.1.5 Ok"] * MAX_RECIPIENTS
        + [str(replies.TOO_MANY_RECIPIENTS)] * RCPT_OVERSHOOT
        + [str(replies.TOO_MANY_RECIPIENTS_CLOSING)]
    )
    assert not any(b"<many-rcpts@t>" in m.data for m in stack.sink.messages)


def test_client_that_stops_at_452_delivers_to_exactly_max_recipients(stack: Stack) -> None:
    """A client that waits for each reply gets 452 4.5.3 at RCPT max_recipients+1 and
    its message then goes to exactly the accepted recipients."""
    raw = RawClient(stack.gateway.port, timeout=60)
    try:
        raw.reply()
        raw.cmd("EHLO c.test")
        raw.cmd("MAIL FROM:<alice@example.net>")
        got = [raw.cmd(f"RCPT TO:<s{i}@example.com>") for i in range(MAX_RECIPIENTS + 1)]
        assert raw.cmd("DATA").startswith("354")
        data = raw.cmd(b"Subject: capped\r\nMessage-ID: <capped@t>\r\n\r\nhi\r\n.\r\n")
    finally:
        raw.close()
    assert got[-1] == str(replies.TOO_MANY_RECIPIENTS)
    assert data.startswith("250 2.0.0 Ok: queued as ")
    (msg,) = stack.sink.wait_for(1, where=lambda m: b"<capped@t>" in m.data, timeout=60)
    assert msg.rcpt_tos == tuple(f"s{i}@example.com" for i in range(MAX_RECIPIENTS))


def test_connection_flood_past_max_connections_gets_421_4_7_0_and_service_recovers(
    stack: Stack,
) -> None:
    """60 simultaneous connections with max_connections 20: 20 greeted, 40 told 421 4.7.0
    and closed; once they go, a new client is served."""
    socks = [
        socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=60) for _ in range(60)
    ]
    try:
        first = [_first_line(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert first.count("220 gw.abuse.test cm-gateway ESMTP") == MAX_CONNECTIONS
    assert first.count(str(replies.TOO_MANY_CONNECTIONS)) == 60 - MAX_CONNECTIONS
    assert _wait_for_free_slot(stack.gateway.port).startswith("250 2.0.0 Ok: queued as ")


def _wait_for_free_slot(port: int) -> str:
    """Send NORMAL once the server greets again (closed sessions are released
    asynchronously); the reply to DATA, or the last refusal after 60 s."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return send_message(port, NORMAL)
        except AssertionError:  # 421 4.7.0 instead of the banner
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _first_line(sock: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("ascii", "replace")


# -- time -----------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["data", "command"])
async def test_slowloris_is_cut_at_smtp_timeout_with_421_4_4_2(phase: str) -> None:
    """A client trickling one byte every 0.3 s (inside DATA, or inside a command line) is
    told 421 4.4.2 and closed once smtp.timeout (2 s) has passed; nothing is processed."""
    processor = RecordingProcessor()
    async with running_server(processor, smtp_config(timeout=2)) as srv:

        def trickle() -> tuple[bytes, float]:
            raw = RawClient(srv.port, timeout=30)
            try:
                raw.reply()
                if phase == "data":
                    raw.cmd("EHLO client.test")
                    raw.cmd("MAIL FROM:<a@example.net>")
                    raw.cmd("RCPT TO:<b@example.com>")
                    assert raw.cmd("DATA").startswith("354")
                start = time.monotonic()
                raw.sock.settimeout(0.3)
                got = b""
                while time.monotonic() - start < 30:
                    try:
                        raw.sock.sendall(b"x")
                        chunk = raw.sock.recv(4096)
                    except TimeoutError:
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    if not chunk:
                        break
                    got += chunk
                return got, time.monotonic() - start
            finally:
                raw.close()

        got, lasted = await asyncio.to_thread(trickle)
    assert got.startswith(str(replies.IDLE_TIMEOUT).encode())
    assert lasted < 25  # bounded by smtp.timeout, not by the client's patience
    assert processor.messages == []


# -- memory ---------------------------------------------------------------------------

ROUNDS = 5


def _settled_rss_kib(gateway: GatewayProcess, readings: int = 5) -> int:
    """The median of a few RSS readings 50 ms apart: one reading taken while a reply is
    still being freed is not what the process keeps."""
    figures = []
    for _ in range(readings):
        figures.append(gateway.rss_kib())
        time.sleep(0.05)
    return int(statistics.median(figures))


def test_memory_stays_bounded_across_repeated_abuse_rounds(stack: Stack) -> None:
    """RSS of the gateway process over 5 rounds of abuse (flood, 1 MB lines, 100 KB
    commands, smuggling): after the first round, the median round grows it by under
    1 MiB and the 4 rounds together by under 8 MiB. Measured: about 0.1 MiB a round; a
    process that kept 1 MiB per refused line (3 a round) would grow by 3 and 12."""
    port = stack.gateway.port
    figures = [("module start", stack.rss_start_kib), ("before rounds", stack.gateway.rss_kib())]
    for round_no in range(1, ROUNDS + 1):
        socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(40)]
        for s in socks:
            s.close()
        _wait_for_free_slot(port)
        long_line = b"Subject: x\r\n\r\n" + b"z" * ((1 << 20) + 1024) + b"\r\n"
        for _ in range(3):
            assert send_message(port, long_line) == str(replies.DATA_LINE_TOO_LONG)
        _session(port, b"EHLO c.test\r\n" + b"X" * 100_000 + b"\r\nQUIT\r\n", quiet=0.5)
        _smuggle(port, f"mem{round_no}", b"\n.\n")
        assert stack.gateway.alive()
        figures.append((f"after round {round_no}", _settled_rss_kib(stack.gateway)))
    print("\ngateway RSS (KiB): " + ", ".join(f"{name} {kib}" for name, kib in figures))
    after_rounds = [kib for _, kib in figures[2:]]
    growths = [b - a for a, b in itertools.pairwise(after_rounds)]  # rounds 2..ROUNDS
    assert statistics.median(growths) < 1024, figures
    assert after_rounds[-1] - after_rounds[0] < 8 * 1024, figures
    assert send_message(port, NORMAL).startswith("250 2.0.0")
