"""A scripted next hop for the pipelining tests: a small asyncio SMTP server on loopback
that offers PIPELINING (or not), records every read exactly as it arrived, and answers
like Postfix's smtpd: commands processed in order, one reply each, DATA answered 554
when no recipient was accepted, a lone dot with no recipients refused.

It runs on the test's own event loop (``async with running(...)``): no threads.

Not ``gateway.testing.NextHopSink``: these tests check the protocol itself (which
commands arrived in one read, a DATA answered 354 with no recipient, a lone dot after
an empty transaction), and aiosmtpd reads line by line and refuses those on its own."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

__all__ = ["Message", "Script", "Sink", "running"]


@dataclass
class Script:
    """What the server says; ``None`` = the normal reply."""

    pipelining: bool = True
    xforward: bool = False
    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None  # e.g. "354 ..." even with no recipient
    final_reply: str | None = None
    xforward_reply: str | None = None
    rset_reply_on_reuse: str | None = None  # to an RSET after a completed message
    hang_up_after_message: bool = False


@dataclass(frozen=True)
class Message:
    """A transaction that got to its final dot."""

    connection: int
    mail: str
    rcpts: tuple[str, ...]
    xforward: tuple[str, ...]
    content: bytes


@dataclass
class Sink:
    script: Script
    port: int = 0
    reads: dict[int, list[bytes]] = field(default_factory=dict)  # connection -> reads
    messages: list[Message] = field(default_factory=list)

    def delivered(self) -> list[Message]:
        """Messages the server accepted (a recipient and a 250 to the dot)."""
        return [m for m in self.messages if m.rcpts]


_ids = itertools.count(1)


class _Session(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.id = next(_ids)
        self.buffer = b""
        self.in_data = False
        self.completed = 0
        self._reset()

    def _reset(self) -> None:
        self.mail: str | None = None
        self.rcpts: list[str] = []
        self.xforward: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sink.reads[self.id] = []
        transport.write(b"220 pipe.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.sink.reads[self.id].append(data)
        self.buffer += data
        while not self.transport.is_closing():
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if self.buffer.startswith(b".\r\n"):
                    content, self.buffer = b"", self.buffer[3:]
                elif end == -1:
                    return
                else:
                    content, self.buffer = self.buffer[: end + 2], self.buffer[end + 5 :]
                # Undo the dot-stuffing (RFC 5321 §4.5.2).
                content = content.replace(b"\r\n..", b"\r\n.")
                if content.startswith(b".."):
                    content = content[1:]
                self.in_data = False
                self._message(content)
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            self._command(line.decode("utf-8"))

    def _reply(self, text: str) -> None:
        self.transport.write(text.encode() + b"\r\n")

    def _command(self, line: str) -> None:
        verb = line.split(" ", 1)[0].upper()
        s = self.sink.script
        if verb == "EHLO":
            offered = ["250-pipe.test", "250-SIZE 10240000", "250-8BITMIME", "250-SMTPUTF8"]
            if s.pipelining:
                offered.append("250-PIPELINING")
            if s.xforward:
                offered.append("250-XFORWARD NAME ADDR PROTO HELO")
            self._reply("\r\n".join([*offered, "250 ENHANCEDSTATUSCODES"]))
        elif verb == "XFORWARD":
            self.xforward.append(line)
            self._reply(s.xforward_reply or "250 2.0.0 Ok")
        elif verb == "MAIL":
            reply = s.mail_reply or "250 2.1.0 Ok"
            if reply.startswith("250"):
                self.mail = line[10:].split(">", 1)[0] + ">"
            self._reply(reply)
        elif verb == "RCPT":
            address = line[8:].split(">", 1)[0].strip("<")
            default = "250 2.1.5 Ok" if self.mail else "503 5.5.1 Error: need MAIL command"
            reply = s.rcpt_replies.get(address, default)
            if reply.startswith("250"):
                self.rcpts.append(address)
            self._reply(reply)
        elif verb == "DATA":
            if s.data_reply is not None:
                reply = s.data_reply
            elif not self.rcpts:
                reply = "554 5.5.1 Error: no valid recipients"
            else:
                reply = "354 End data with <CR><LF>.<CR><LF>"
            self.in_data = reply.startswith("354")
            self._reply(reply)
        elif verb == "RSET":
            self._reset()
            if self.completed and s.rset_reply_on_reuse:
                self._reply(s.rset_reply_on_reuse)
            else:
                self._reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            self._reply("221 2.0.0 Bye")
            self.transport.close()
        else:
            self._reply("250 2.0.0 Ok")

    def _message(self, content: bytes) -> None:
        s = self.sink.script
        self.sink.messages.append(
            Message(self.id, self.mail or "", tuple(self.rcpts), tuple(self.xforward), content)
        )
        if not self.rcpts:
            self._reply("554 5.5.1 Error: no valid recipients")
        else:
            self._reply(s.final_reply or f"250 2.0.0 Ok: queued as Q{len(self.sink.messages)}")
        self.completed += 1
        self._reset()
        if s.hang_up_after_message:
            self.transport.close()


@asynccontextmanager
async def running(script: Script | None = None) -> AsyncIterator[Sink]:
    """The server on a free loopback port for the duration of the block."""
    sink = Sink(script or Script())
    server = await asyncio.get_running_loop().create_server(lambda: _Session(sink), "127.0.0.1", 0)
    sink.port = server.sockets[0].getsockname()[1]
    try:
        yield sink
    finally:
        server.close()
        await server.wait_closed()
