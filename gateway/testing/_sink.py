"""A next hop for tests: a real SMTP server on loopback that records what it accepts.

``NextHopSink`` runs aiosmtpd (a thread with its own loop), so sync and async tests alike
read what it received and wait for it. What it does is ``SinkBehaviour``, which a test
may change while the sink runs: refuse chosen recipients or every MAIL, answer DATA with
a fixed reply or one chosen per message, go slow, hang up, and offer or not PIPELINING,
SMTPUTF8 and XFORWARD (whose attributes it keeps per transaction, like Postfix)::

    with running_sink(SinkBehaviour(refuse={"bob@example.com": "550 5.1.1 No such user"})) as sink:
        ...  # point [downstream] url at sink.url
        [message] = sink.wait_for(1)
        assert message.rcpt_tos == ("alice@example.com",)
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, syntax

from ._records import ReceivedMessage, SinkBehaviour, free_port

__all__ = ["XFORWARD_ALL", "NextHopSink", "running_sink"]

XFORWARD_ALL = "NAME ADDR PORT PROTO HELO IDENT SOURCE"
_XTEXT = re.compile(r"\+([0-9A-F]{2})")
_connections = itertools.count(1)


def _xtext(value: str) -> str:
    # Its own decoding (not the gateway's): a wrong encoding on our side shows up here.
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


class _SinkSMTP(SMTP):
    """aiosmtpd's server with a connection id, a command log, and XFORWARD."""

    def __init__(self, sink: NextHopSink, *args: Any, **kwargs: Any) -> None:
        self.attrs: dict[str, str] = {}
        self.xforward_transactions = 0
        self.conn_id = 0  # set at the first command: the controller's start-up probe has none
        self.line_length_limit = sink.line_length_limit  # read by SMTP.__init__
        super().__init__(*args, **kwargs)
        self.sink = sink
        self.enable_SMTPUTF8 = sink.behaviour.smtputf8

    def connection_lost(self, error: Exception | None) -> None:
        if self.conn_id:
            with self.sink._cond:
                self.sink.open_now -= 1
        super().connection_lost(error)

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self.attrs = {}  # Postfix: XFORWARD attributes last one transaction

    def note(self, line: str, *, log_line: bool = True) -> list[str]:
        """Log a command; the verbs of this connection so far."""
        with self.sink._cond:
            if not self.conn_id:
                self.conn_id = next(_connections)
                self.sink.open_now += 1
                self.sink.peak_open = max(self.sink.peak_open, self.sink.open_now)
            if log_line:
                self.sink.lines.append(line)
            verbs = self.sink.commands.setdefault(self.conn_id, [])
            verbs.append(line.split(" ", 1)[0].upper())
            self.sink._cond.notify_all()
            return list(verbs)

    def hang_up(self) -> None:
        """Close after the reply being returned has been written."""
        assert self.transport is not None
        asyncio.get_running_loop().call_soon(self.transport.close)

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD: attributes for the next transaction."""
        self.note(f"XFORWARD {arg or ''}".strip())
        behaviour = self.sink.behaviour
        if behaviour.xforward is None:
            await self.push('500 Error: command "XFORWARD" not recognized')
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        if behaviour.xforward_reply is not None:
            await self.push(behaviour.xforward_reply)
            return
        self.xforward_transactions += 0 if self.attrs else 1
        if behaviour.xforward_421_on_reuse and self.xforward_transactions == 2:
            await self.push("421 4.3.2 sink.test shutting down")
            assert self.transport is not None
            self.transport.close()
            return
        for word in (arg or "").split():
            name, _, value = word.partition("=")
            self.attrs[name.upper()] = _xtext(value)
        await self.push("250 2.0.0 Ok")


class _Handler:
    def __init__(self, sink: NextHopSink) -> None:
        self.sink = sink
        self.data_421_left = 1 if sink.behaviour.data_421_once else 0

    async def handle_EHLO(
        self, server: _SinkSMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        server.note(f"EHLO {hostname}")
        behaviour = self.sink.behaviour
        extra = ["250-PIPELINING"] if behaviour.pipelining else []
        if behaviour.xforward is not None:
            extra.append(f"250-XFORWARD {behaviour.xforward}")
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(
        self, server: _SinkSMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        verbs = server.note(f"MAIL {address}")
        behaviour = self.sink.behaviour
        if behaviour.mail_421_on_reuse and verbs.count("MAIL") == 2:
            server.hang_up()
            return "421 4.4.2 sink.test closing connection"
        if behaviour.mail_reply is not None:
            if behaviour.mail_reply.startswith("421"):
                server.hang_up()
            return behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: _SinkSMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        server.note(f"RCPT {address}")
        refusal = self.sink.behaviour.refuse.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: _SinkSMTP, session: Any, envelope: Any) -> str:
        server.note("DATA")
        behaviour = self.sink.behaviour
        if behaviour.data_delay:
            await asyncio.sleep(behaviour.data_delay)
        if self.data_421_left:
            self.data_421_left -= 1
            server.hang_up()
            return "421 4.3.0 sink.test shutting down"
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            peer=str(session.peer[0]) if session.peer else "",
            mail_options=tuple(envelope.mail_options),
            forwarded=dict(server.attrs),
            connection=server.conn_id,
        )
        reply = behaviour.data_reply
        if reply is None and behaviour.reply_for is not None:
            reply = behaviour.reply_for(message)
        if reply is not None:
            if reply.startswith("421"):
                server.hang_up()
            return reply
        self.sink._record(message)
        if behaviour.hang_up_after_data:
            server.hang_up()
        return f"250 2.0.0 Ok: queued as {behaviour.queue_id}"

    async def handle_RSET(self, server: _SinkSMTP, session: Any, envelope: Any) -> str:
        server.note("RSET")
        if self.sink.behaviour.die_at_rset:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
        return "250 2.0.0 Ok"

    async def handle_NOOP(self, server: _SinkSMTP, session: Any, envelope: Any, arg: str) -> str:
        server.note("NOOP", log_line=False)
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: _SinkSMTP, session: Any, envelope: Any) -> str:
        server.note("QUIT")
        return "221 2.0.0 Bye"


class _Controller(Controller):
    def __init__(self, sink: NextHopSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def factory(self) -> SMTP:
        return _SinkSMTP(self._sink, self.handler, **self.SMTP_kwargs)


class NextHopSink:
    """A recording SMTP server on ``host:port`` (port 0 picks a free one).

    ``line_length_limit``: Postfix's smtpd takes lines of any length (aiosmtpd refuses
    past 1,000 octets by default); ``None`` keeps aiosmtpd's limit."""

    def __init__(
        self,
        behaviour: SinkBehaviour | None = None,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        hostname: str = "sink.test",
        line_length_limit: int | None = 1 << 21,
        ready_timeout: float = 10.0,
    ) -> None:
        self.behaviour = behaviour or SinkBehaviour()
        self.host = host
        self.port = port
        self.hostname = hostname
        self.ready_timeout = ready_timeout
        self.line_length_limit = line_length_limit or SMTP.line_length_limit
        self._messages: list[ReceivedMessage] = []
        # The live list (appended to as messages arrive), for code that keeps a reference.
        self.received = self._messages
        self._cond = threading.Condition()
        self._controller: Controller | None = None
        self.commands: dict[int, list[str]] = {}  # connection -> verbs, in order
        self.lines: list[str] = []  # every command line logged, in order
        self.open_now = 0
        self.peak_open = 0

    @property
    def url(self) -> str:
        """``smtp://host:port``, for ``[downstream] url``."""
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> NextHopSink:
        """Start listening (again, on the same port once one was picked)."""
        if self._controller is not None:
            return self
        if self.port == 0:
            # Controller's self-test connects to the configured port, so 0 cannot work.
            self.port = free_port(self.host)
        controller = _Controller(
            self,
            _Handler(self),
            hostname=self.host,
            port=self.port,
            server_hostname=self.hostname,
            ident="cm-gateway test sink",
            ready_timeout=self.ready_timeout,
            decode_data=False,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until :meth:`start`."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        """True while the sink accepts connections."""
        return self._controller is not None

    def _record(self, msg: ReceivedMessage) -> None:
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of every message recorded so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """Connections that sent a command (the controller's start-up probe sends none)."""
        with self._cond:
            return len(self.commands)

    def count(self, verb: str) -> int:
        """How many times ``verb`` arrived, over every connection."""
        with self._cond:
            return sum(v.count(verb) for v in self.commands.values())

    def wait_for_command(self, verb: str, count: int = 1, *, timeout: float = 20.0) -> None:
        """Wait until ``verb`` arrived ``count`` times (e.g. a DATA now being answered
        slowly); ``TimeoutError`` after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count(verb) >= count, timeout):
                raise TimeoutError(f"sink got {self.count(verb)}/{count} {verb} in {timeout}s")

    def verbs(self) -> list[str]:
        """The verbs of the logged command lines (NOOP is not logged), in arrival order."""
        with self._cond:
            return [line.split(" ", 1)[0].upper() for line in self.lines]

    def clear(self) -> None:
        """Forget every recorded message."""
        with self._cond:
            self._messages.clear()

    def wait_for(
        self,
        count: int = 1,
        *,
        where: Callable[[ReceivedMessage], bool] | None = None,
        timeout: float = 20.0,
    ) -> list[ReceivedMessage]:
        """Wait until ``count`` recorded messages satisfy ``where``; return them.

        Raises ``TimeoutError`` naming what did arrive, so a failing test says why."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self._messages if where is None or where(m)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.mail_from, m.rcpt_tos, m.subject) for m in self._messages]
                    raise TimeoutError(
                        f"sink got {len(found)}/{count} matching messages in {timeout}s; "
                        f"all messages: {seen}"
                    )
                self._cond.wait(left)


@contextmanager
def running_sink(behaviour: SinkBehaviour | None = None, **options: Any) -> Iterator[NextHopSink]:
    """A started :class:`NextHopSink` for the duration of the block (``options``: its
    keyword arguments)."""
    sink = NextHopSink(behaviour, **options).start()
    try:
        yield sink
    finally:
        sink.stop()
