"""Fuzzing SMTP conversations (issue 6, item 4): a hypothesis state machine against the
real SMTP front over a real socket.

The machine sends random command sequences (EHLO/HELO with changing names, MAIL FROM
valid/null/non-ASCII/with parameters, RCPT TO allowed/denied/over the cap, DATA with
clean, oversized, long-line (1,200 octets: accepted) and SMTP-smuggling bodies, RSET,
NOOP, VRFY, HELP, EXPN, garbage, empty lines, QUIT and reconnect, a client that hangs up
inside DATA) and keeps a model of the RFC 5321 state. After every command:

- the reply is a well-formed SMTP reply (3-digit code, multi-line continuation, one
  code per reply, at most 512 octets a line, no control characters; an enhanced status
  code, when present, agrees with the basic code and is required once EHLO advertised
  ENHANCEDSTATUSCODES);
- its code is the one the model expects (exact code where our contract or RFC 5321
  fixes it, the class where only the class is fixed);
- invariant: the processor behind the server was handed exactly the transactions whose
  DATA ended cleanly, each once, with the envelope the client built, and a real next hop
  (an SMTP sink on loopback, which the processor relays to) received exactly those the
  client saw a 250 for, with the envelope and the bytes handed over. No unaccepted
  message is ever delivered; nothing smuggled after a bare-LF "end of data" ever becomes
  a message. Every example starts with a transaction whose body hides a second one (an
  SMTP-smuggling trick), so each run tries dozens of them.

One server per test function (a thread with its own loop), one connection per example.
``CMGW_SOAK=1`` or ``-m soak`` runs the long profile.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, cast

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway import replies
from gateway.config import SmtpConfig
from gateway.deliver._delivery import SmtpDelivery
from gateway.pipeline import InboundMessage
from gateway.replies import Reply
from gateway.smtp import SmtpServer
from gateway.testing import NextHopSink, running_sink

SOAK = bool(os.environ.get("CMGW_SOAK"))
MAX_SIZE = 4000
MAX_RCPTS = 3
ALLOWED = "allowed.test"
BOGUS_LIMIT = 5  # aiosmtpd closes the connection at the 5th unknown command
TIMEOUT = 30.0  # socket reads: this machine is slow and shared

VERBS = {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP"}
VERBS |= {"EXPN", "STARTTLS", "AUTH"}
_REPLY_LINE = re.compile(r"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.DOTALL)
_ENHANCED = re.compile(r"^([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SMUGGLED = (
    b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@allowed.test>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nsmuggled body\r\n"
)
# Every lone-CR/LF variant of "end of data" that some MTA has accepted (the SMTP
# smuggling family); CRLF.CRLF itself is the real end and not a trick.
TRICKS = [
    b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r.\n", b"\r.\r",
    b"\n..\n", b"\r\n\x00.\r\n", b"\n\n.\n\n",
]  # fmt: skip


class ScriptedProcessor:
    """The message processor behind the server: the reply depends on a marker at the start
    of the message (``Subject: [reject]`` ...); records what it was handed, and relays
    the ``[accept]`` ones to a real next hop (``delivery``) before answering 250."""

    def __init__(self, delivery: SmtpDelivery) -> None:
        self.handed: list[InboundMessage] = []
        self.delivery = delivery

    async def process(self, msg: InboundMessage) -> Reply:
        self.handed.append(msg)
        if msg.content.startswith(b"Subject: [reject]"):
            return replies.rule_reject("rejected by the test processor")
        if msg.content.startswith(b"Subject: [defer]"):
            return replies.rule_defer("deferred by the test processor")
        if msg.content.startswith(b"Subject: [crash]"):
            raise RuntimeError("the test processor crashed")
        result = await self.delivery.deliver(
            msg.mail_from, msg.rcpt_tos, msg.content, smtp_utf8=msg.smtp_utf8
        )
        assert result.reply.code == 250, f"the sink refused a message: {result}"
        return replies.queued(msg.queue_id)


def expected_outcome(content: bytes, queue_id: str) -> Reply:
    """What the test processor answers for ``content``."""
    if content.startswith(b"Subject: [reject]"):
        return replies.rule_reject("rejected by the test processor")
    if content.startswith(b"Subject: [defer]"):
        return replies.rule_defer("deferred by the test processor")
    if content.startswith(b"Subject: [crash]"):
        return replies.INTERNAL_ERROR
    return replies.queued(queue_id)


@contextmanager
def server_thread(processor: ScriptedProcessor, config: SmtpConfig) -> Iterator[int]:
    """The real SmtpServer on its own loop in a thread; yields its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="smtp-under-test", daemon=True)
    thread.start()

    async def start() -> SmtpServer:
        server = SmtpServer(config, processor)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.aclose(grace=2.0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)
        loop.close()


class Connection:
    """A byte-exact SMTP client that returns every line of each reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed the connection; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> list[str]:
        """All lines of the next reply (raises if the server closes instead)."""
        lines: list[str] = []
        while True:
            raw = self._line()
            assert len(raw) <= 510, f"reply line over 512 octets: {raw[:80]!r}..."
            text = raw.decode("utf-8", "strict")
            lines.append(text)
            match = _REPLY_LINE.match(text)
            assert match is not None, f"not an SMTP reply line: {text!r}"
            if match.group(2) != "-":
                return lines

    def command(self, line: bytes) -> list[str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect_closed(self) -> None:
        """The server closes the connection now (EOF, nothing more said)."""
        assert self.buf == b"", f"unexpected bytes after the last reply: {self.buf!r}"
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        assert chunk == b"", f"expected the server to close; got {chunk!r}"

    def close(self) -> None:
        self.sock.close()


def check_reply(lines: list[str], *, enhanced_required: bool) -> int:
    """Assert ``lines`` form one valid SMTP reply; return its code."""
    codes = set()
    for index, line in enumerate(lines):
        match = _REPLY_LINE.match(line)
        assert match is not None, f"not an SMTP reply line: {line!r}"
        codes.add(match.group(1))
        last = index == len(lines) - 1
        assert (match.group(2) == "-") != last, f"bad continuation marker in {lines!r}"
        text = match.group(3) or ""
        assert not _CONTROL.search(text), f"control character in reply {line!r}"
        enhanced = _ENHANCED.match(text)
        if enhanced is not None:
            assert enhanced.group(1) == match.group(1)[0], f"enhanced code disagrees: {line!r}"
        elif enhanced_required and last:
            raise AssertionError(f"ENHANCEDSTATUSCODES advertised but missing in {line!r}")
    assert len(codes) == 1, f"one reply, several codes: {lines!r}"
    return int(codes.pop())


@dataclass(frozen=True)
class Body:
    """One generated message: what goes on the wire and what the server should see."""

    wire: bytes  # dot-stuffed, without the final ".\r\n"
    content: bytes  # what a correct server hands on (CRLF, unstuffed)
    kind: str  # clean | smuggle | long-line | too-big


def stuff(line: bytes) -> bytes:
    return b"." + line if line.startswith(b".") else line


LINES = st.one_of(
    st.sampled_from(
        [b"", b".", b"..", b".hidden", b"...three", b" . ", b"Hello there.", b"-- ", b"\x00nul"]
    ),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
        max_size=60,
    ).map(lambda s: s.encode("utf-8")),
)


@st.composite
def bodies(
    draw: st.DrawFn,
    kinds: tuple[str, ...] = ("clean", "clean", "clean", "smuggle", "long-line", "too-big"),
) -> Body:
    marker = draw(st.sampled_from(["accept", "accept", "accept", "reject", "defer", "crash"]))
    kind = draw(st.sampled_from(kinds))
    lines = [f"Subject: [{marker}] test".encode(), b"From: <sender@example.org>", b""]
    lines += draw(st.lists(LINES, max_size=12))
    if kind == "long-line":
        lines.append(b"x" * 1200)
    elif kind == "too-big":
        lines += [b"y" * 78] * 60
    content = b"".join(line + b"\r\n" for line in lines)
    wire = b"".join(stuff(line) + b"\r\n" for line in lines)
    if kind == "smuggle":
        # Inside the body, the way an attacker writes it: raw, not dot-stuffed.
        trick = draw(st.sampled_from(TRICKS))
        at = draw(st.integers(3, len(lines)))
        head = b"".join(stuff(line) + b"\r\n" for line in lines[:at])
        tail = b"".join(stuff(line) + b"\r\n" for line in lines[at:])
        wire = head + b"x" + trick + SMUGGLED + tail
        content = b""  # the server decides; checked by properties, not bytes
    return Body(wire=wire, content=content, kind=kind)


def lone_line_ending(data: bytes) -> str | None:
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf:
        return "LF"
    if data.count(b"\r") != crlf:
        return "CR"
    return None


@dataclass
class Expected:
    """A transaction the model expects the processor to have been handed."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    body: Body
    content: bytes = b""  # what the processor was handed (and relays when accepted)


class SmtpConversation(RuleBasedStateMachine):
    """The model of one client's conversation with the gateway's SMTP front."""

    port: int = 0
    processor: ScriptedProcessor
    sink: NextHopSink
    bare_lf: str = "reject"

    def __init__(self) -> None:
        super().__init__()
        self.handed_start = len(self.processor.handed)
        self.delivered_start = len(self.sink.messages)
        self.expected_handed: list[Expected] = []
        self.expected_delivered: list[Expected] = []
        self.conn: Connection | None = None
        self._open()

    # -- model state ----------------------------------------------------------------

    def _open(self) -> None:
        self.conn = Connection(self.port)
        self.greeted = False
        self.extended = False
        self.enhanced = False
        self.bogus = 0
        self._reset()
        code = self._check(self.conn.reply())
        assert code == 220, f"greeting {code}"

    def _reset(self) -> None:
        self.mail_from: str | None = None
        self.smtputf8 = False
        self.rcpts: list[str] = []

    def _check(self, lines: list[str]) -> int:
        return check_reply(lines, enhanced_required=self.enhanced)

    def _send(self, line: bytes) -> tuple[int, list[str]]:
        assert self.conn is not None
        lines = self.conn.command(line)
        return self._check(lines), lines

    def _expect(self, line: bytes, expected: int | Reply) -> list[str]:
        code, lines = self._send(line)
        want = expected.code if isinstance(expected, Reply) else expected
        if want < 10:  # a class: 2, 4, 5
            assert code // 100 == want, f"{line!r}: expected {want}xx, got {lines!r}"
        else:
            assert code == want, f"{line!r}: expected {want}, got {lines!r}"
        if isinstance(expected, Reply):
            assert lines[-1] == str(expected), f"{line!r}: expected {expected}, got {lines!r}"
        return lines

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def _closed(self) -> None:
        assert self.conn is not None
        self.conn.expect_closed()
        self.conn.close()
        self.conn = None

    # -- greetings ------------------------------------------------------------------

    @precondition(lambda self: self.connected)
    @rule(
        verb=st.sampled_from(["EHLO", "HELO", "ehlo", "Helo"]),
        name=st.sampled_from(
            ["client.example", "a", "[127.0.0.1]", "mx-2.example.net", "x" * 200, "bücher.test"]
        ),
    )
    def greet(self, verb: str, name: str) -> None:
        self._greet(verb, name)

    def _greet(self, verb: str, name: str) -> None:
        lines = self._expect(f"{verb} {name}".encode(), 250)
        self.greeted = True
        self.extended = verb.upper() == "EHLO"
        self._reset()  # RFC 5321 4.1.4: a new EHLO/HELO resets the transaction
        if self.extended:
            keywords = {line[4:].split(" ")[0].upper() for line in lines[1:]}
            assert f"250-SIZE {MAX_SIZE}" in lines, f"SIZE not advertised: {lines!r}"
            assert {"8BITMIME", "SMTPUTF8"} <= keywords, lines
            assert "AUTH" not in keywords, "AUTH offered without TLS and users"
            self.enhanced = "ENHANCEDSTATUSCODES" in keywords
        else:
            assert len(lines) == 1, f"HELO answered with extensions: {lines!r}"

    @precondition(lambda self: self.connected)
    @rule(verb=st.sampled_from(["EHLO", "HELO"]))
    def greet_without_a_name(self, verb: str) -> None:
        self._expect(verb.encode(), 501)

    # -- the transaction ------------------------------------------------------------

    @precondition(lambda self: self.connected)
    @rule(
        kind=st.sampled_from(
            [
                "plain",
                "plain",
                "null",
                "size-ok",
                "size-big",
                "utf8-declared",
                "utf8-undeclared",
                "body-8bit",
                "bad-param",
                "empty",
                "no-colon",
            ]
        ),
        n=st.integers(0, 9),
    )
    def mail(self, kind: str, n: int) -> None:
        self._mail(kind, n)

    def _mail(self, kind: str, n: int) -> None:
        address = {"utf8-declared": f"jöe{n}@example.org", "utf8-undeclared": "jöe@example.org"}
        addr = address.get(kind, f"sender{n}@example.org")
        params = {
            "size-ok": " SIZE=1000",
            "size-big": f" SIZE={MAX_SIZE * 10}",
            "utf8-declared": " SMTPUTF8",
            "body-8bit": " BODY=8BITMIME",
            "bad-param": " FOO=BAR",
        }.get(kind, "")
        line = {
            "null": "MAIL FROM:<>",
            "empty": "MAIL FROM:",
            "no-colon": f"MAIL <{addr}>",
        }.get(kind, f"MAIL FROM:<{addr}>{params}")
        expected: int | Reply
        if not self.greeted:
            expected = 503
        elif kind in ("empty", "no-colon"):
            expected = 501
        elif params and not self.extended:
            expected = 501  # parameters are an ESMTP thing
        elif self.mail_from is not None:
            expected = 503  # nested MAIL
        elif kind == "bad-param":
            expected = 555
        elif kind == "size-big":
            expected = replies.TOO_BIG
        elif kind == "utf8-undeclared":
            expected = replies.SMTPUTF8_REQUIRED
        else:
            expected = 250
        self._expect(line.encode(), expected)
        if expected == 250:
            self.mail_from = "" if kind == "null" else addr
            self.smtputf8 = kind == "utf8-declared"

    @precondition(lambda self: self.connected)
    @rule(
        kind=st.sampled_from(
            ["allowed", "allowed", "allowed-caps", "denied", "utf8", "empty", "param"]
        ),
        n=st.integers(0, 9),
    )
    def rcpt(self, kind: str, n: int) -> None:
        self._rcpt(kind, n)

    def _rcpt(self, kind: str, n: int) -> None:
        addr = {
            "allowed": f"user{n}@{ALLOWED}",
            "allowed-caps": f"USER{n}@{ALLOWED.upper()}",
            "denied": f"user{n}@denied.test",
            "utf8": f"üser{n}@{ALLOWED}",
            "param": f"user{n}@{ALLOWED}",
        }.get(kind, "")
        line = "RCPT TO:" if kind == "empty" else f"RCPT TO:<{addr}>"
        if kind == "param":
            line += " NOTIFY=NEVER"
        expected: int | Reply
        if not self.greeted or self.mail_from is None:
            expected = 503
        elif kind == "empty":
            expected = 501
        elif kind == "param":
            expected = 555 if self.extended else 501
        elif kind == "utf8" and not self.smtputf8:
            expected = replies.SMTPUTF8_REQUIRED
        elif len(self.rcpts) >= MAX_RCPTS:
            expected = replies.TOO_MANY_RECIPIENTS
        elif kind == "denied":
            expected = replies.RELAY_DENIED
        else:
            expected = 250
        self._expect(line.encode(), expected)
        if expected == 250:
            self.rcpts.append(addr)

    @precondition(lambda self: self.connected)
    @rule(body=bodies())
    def data(self, body: Body) -> None:
        self._data(body)

    def _data(self, body: Body) -> None:
        if not self.greeted or not self.rcpts:
            self._expect(b"DATA", 503)
            return
        self._expect(b"DATA", 354)
        assert self.conn is not None and self.mail_from is not None
        self.conn.send(body.wire + b".\r\n")
        _code, lines = self._check_next()
        envelope = (self.mail_from, tuple(self.rcpts))
        self._reset()  # whatever the outcome, the transaction is over
        if body.kind == "too-big":
            assert lines[-1] == str(replies.TOO_BIG), lines
            return
        # A "long-line" body (1,200 octets, past RFC 5322's 998) is accepted and handed on
        # unchanged like a clean one: the server refuses only lines over 1 MiB.
        bare = lone_line_ending(body.wire)
        if bare is not None and self.bare_lf == "reject":
            want = replies.BARE_LF if bare == "LF" else replies.BARE_CR
            assert lines[-1] == str(want), f"smuggling body: expected {want}, got {lines!r}"
            return
        expected = Expected(*envelope, body=body)
        self.expected_handed.append(expected)
        handed = self.processor.handed[self.handed_start + len(self.expected_handed) - 1 :]
        assert len(handed) == 1, f"one DATA, {len(handed)} messages handed over"
        msg = handed[0]
        want_reply = expected_outcome(msg.content, msg.queue_id)
        assert lines[-1] == str(want_reply), f"expected {want_reply}, got {lines!r}"
        if want_reply.code == 250:
            self.expected_delivered.append(
                Expected(*envelope, body=body, content=bytes(msg.content))
            )

    @precondition(lambda self: self.connected and self.mail_from is None)
    @rule(
        verb=st.sampled_from(["EHLO", "HELO"]),
        sender=st.sampled_from(["plain", "null", "utf8-declared", "size-ok", "body-8bit"]),
        recipients=st.lists(
            st.tuples(
                st.sampled_from(["allowed", "allowed-caps", "denied", "utf8"]), st.integers(0, 9)
            ),
            min_size=1,
            max_size=MAX_RCPTS + 1,
        ),
        body=bodies(),
    )
    def transaction(
        self, verb: str, sender: str, recipients: list[tuple[str, int]], body: Body
    ) -> None:
        """A whole transaction in one step (greeting first when there was none), so that
        DATA is reached often; every command in it is checked like a single one."""
        if not self.greeted:
            self._greet(verb, "client.example")
        self._mail(sender, 0)
        for kind, n in recipients:
            self._rcpt(kind, n)
        self._data(body)

    @initialize(
        n=st.integers(0, 9),
        recipients=st.lists(
            st.tuples(
                st.sampled_from(["allowed", "allowed-caps", "denied", "utf8"]), st.integers(0, 9)
            ),
            max_size=MAX_RCPTS,
        ),
        body=bodies(kinds=("smuggle",)),
    )
    def smuggling_transaction(self, n: int, recipients: list[tuple[str, int]], body: Body) -> None:
        """Every example starts with a whole transaction (one allowed recipient at least)
        whose body hides a second one behind a lone-CR/LF "end of data"."""
        self.transaction("EHLO", "plain", [("allowed", n), *recipients], body)

    def _check_next(self) -> tuple[int, list[str]]:
        assert self.conn is not None
        lines = self.conn.reply()
        return self._check(lines), lines

    @precondition(lambda self: self.connected)
    @rule()
    def data_with_an_argument(self) -> None:
        if not self.greeted or not self.rcpts:
            self._expect(b"DATA now", 503)
        else:
            self._expect(b"DATA now", 501)

    @precondition(lambda self: self.connected and self.greeted and bool(self.rcpts))
    @rule(cut=st.integers(0, 200))
    def hang_up_inside_data(self, cut: int) -> None:
        """A client that goes away mid-DATA: that message must never be delivered."""
        self._expect(b"DATA", 354)
        assert self.conn is not None
        self.conn.send(b"Subject: [accept] cut short\r\n\r\n" + b"z" * cut)
        self.conn.close()
        self.conn = None

    # -- everything else ------------------------------------------------------------

    @precondition(lambda self: self.connected)
    @rule(arg=st.sampled_from(["", " x"]))
    def rset(self, arg: str) -> None:
        if arg:
            self._expect(b"RSET" + arg.encode(), 501)
            return
        self._expect(b"RSET", 250)
        self._reset()

    @precondition(lambda self: self.connected)
    @rule(arg=st.sampled_from(["", " anything at all", " ü"]))
    def noop(self, arg: str) -> None:
        self._expect(("NOOP" + arg).encode(), 250)

    @precondition(lambda self: self.connected)
    @rule(arg=st.sampled_from(["", f" <someone@{ALLOWED}>", " postmaster"]))
    def vrfy(self, arg: str) -> None:
        self._expect(("VRFY" + arg).encode(), 252 if arg else 501)

    @precondition(lambda self: self.connected)
    @rule(arg=st.sampled_from(["", " MAIL", " RCPT", " NOSUCH"]))
    def help(self, arg: str) -> None:
        self._expect(("HELP" + arg).encode(), 501 if arg == " NOSUCH" else 250)

    @precondition(lambda self: self.connected)
    @rule()
    def expn(self) -> None:
        self._expect(b"EXPN staff", 502)

    @precondition(lambda self: self.connected)
    @rule(
        word=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8).filter(
            lambda w: w not in VERBS
        ),
        arg=st.sampled_from(["", " x", " MAIL FROM:<a@b.test>"]),
    )
    def garbage(self, word: str, arg: str) -> None:
        self.bogus += 1
        if self.bogus >= BOGUS_LIMIT:
            self._expect((word + arg).encode(), 502)
            self._closed()
        else:
            self._expect((word + arg).encode(), 500)

    @precondition(lambda self: self.connected)
    @rule(verb=st.sampled_from(["NOOP", "MAIL FROM:", "RCPT TO:", "HELO", "XYZZY"]))
    def overlong_command(self, verb: str) -> None:
        """RFC 5321 4.5.3.1.4: a command line is at most 512 octets."""
        self._expect(verb.encode() + b" " + b"x" * 600, replies.COMMAND_TOO_LONG)

    @precondition(lambda self: self.connected)
    @rule()
    def empty_line(self) -> None:
        self._expect(b"", 500)

    @precondition(lambda self: self.connected)
    @rule()
    def quit(self) -> None:
        self._expect(b"QUIT", 221)
        self._closed()

    @precondition(lambda self: not self.connected)
    @rule()
    def reconnect(self) -> None:
        self._open()

    # -- what must always hold ------------------------------------------------------

    @invariant()
    def only_accepted_transactions_reach_the_processor(self) -> None:
        handed = self.processor.handed[self.handed_start :]
        assert len(handed) == len(self.expected_handed), (
            f"processor handed {len(handed)} messages, model expected {len(self.expected_handed)}"
        )
        for msg, want in zip(handed, self.expected_handed, strict=True):
            assert (msg.mail_from, msg.rcpt_tos) == (want.mail_from, want.rcpt_tos)
            self._check_content(msg, want.body)

    @invariant()
    def the_next_hop_received_exactly_the_messages_answered_250(self) -> None:
        received = self.sink.messages[self.delivered_start :]
        assert [("" if m.is_bounce else m.mail_from, m.rcpt_tos, m.data) for m in received] == [
            (w.mail_from, w.rcpt_tos, w.content) for w in self.expected_delivered
        ]

    def _check_content(self, msg: InboundMessage, body: Body) -> None:
        if body.kind in ("clean", "long-line"):
            assert msg.content == body.content, "content changed on the way in"
            return
        # A smuggling body accepted (bare_lf = "normalize", or a trick without a lone
        # CR/LF such as a NUL before the dot): one message, every line ending CRLF, the
        # would-be second transaction still inside it as text.
        assert body.kind == "smuggle"
        assert self.bare_lf == "normalize" or lone_line_ending(body.wire) is None
        assert lone_line_ending(msg.content) is None, "a lone CR/LF reached the processor"
        assert b"MAIL FROM:<evil@attacker.test>" in msg.content

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,  # a shared, slow machine: wall-clock deadlines would be flaky
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


DEFAULT = _settings(200, 40) if SOAK else _settings(30, 25)
LONG = _settings(1000, 60)


def _run(bare_lf: Literal["reject", "normalize"], profile: settings) -> None:
    config = SmtpConfig(
        listen="127.0.0.1:0",
        hostname="gw.test",
        timeout=60,
        relay_networks=[],  # relay only to relay_domains: both outcomes reachable
        relay_domains=[ALLOWED],
        max_recipients=MAX_RCPTS,
        max_message_size=MAX_SIZE,
        bare_lf=bare_lf,
    )
    with running_sink() as sink:
        processor = ScriptedProcessor(SmtpDelivery(sink.host, sink.port, timeout=TIMEOUT))
        with server_thread(processor, config) as port:
            machine = type(
                f"SmtpConversation_{bare_lf}",
                (SmtpConversation,),
                {"port": port, "processor": processor, "sink": sink, "bare_lf": bare_lf},
            )
            # A factory, not the class: hypothesis digests what it is given with
            # inspect.getsource, which for a class parses this whole module with ast, and
            # CPython 3.11.7's parser can raise "AST constructor recursion depth mismatch"
            # in a worker where an earlier test hit a RecursionError (deep MIME nesting).
            # (A factory works at run time; hypothesis types the argument as the class.)
            factory = cast("type[RuleBasedStateMachine]", lambda: machine())
            run_state_machine_as_test(factory, settings=profile)


def test_random_conversations_get_valid_replies_and_deliver_only_accepted_mail() -> None:
    """Random command sequences (bare_lf = reject): every reply valid and as the RFC 5321
    model expects; only transactions answered 250 are delivered, each once."""
    _run("reject", DEFAULT)


def test_random_conversations_with_bare_lf_normalize_never_split_a_message() -> None:
    """The same with bare_lf = normalize: smuggling bodies stay one message, CRLF only."""
    _run("normalize", _settings(12, 25) if not SOAK else DEFAULT)


@pytest.mark.soak
def test_soak_random_conversations_get_valid_replies_and_deliver_only_accepted_mail() -> None:
    """The long profile of the conversation fuzzer (1,000 examples of 60 steps)."""
    _run("reject", LONG)
