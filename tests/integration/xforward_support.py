"""A next hop that speaks XFORWARD like Postfix's reinjection smtpd, for the XFORWARD
tests: a real aiosmtpd server on loopback that advertises XFORWARD (or not, or only
some attributes), answers it (or refuses it with a given reply), keeps the attributes
until the end of the transaction (DATA done, RSET, EHLO) and records, per delivered
message, what was forwarded for it. Its xtext decoding is its own (not the gateway's),
so a wrong encoding on our side shows up here."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, syntax

from .downstream_sink import free_port

__all__ = ["ForwardSink", "SinkMessage", "running_forward_sink"]

ALL = "NAME ADDR PORT PROTO HELO IDENT SOURCE"
_ESCAPE = re.compile(r"\+([0-9A-F]{2})")


@dataclass(frozen=True)
class SinkMessage:
    """One message the sink accepted, with the XFORWARD attributes in force for it."""

    mail_from: str
    content: bytes
    forwarded: dict[str, str]


@dataclass
class ForwardSink:
    """What the sink saw; read it from the test's thread."""

    port: int
    offer: str | None = ALL  # the EHLO keyword's attribute list; None: no XFORWARD
    refuse_with: str | None = None  # e.g. "501 5.5.4 Bad NAME syntax"
    hang_up_on_reuse: bool = False  # 421 and close at a connection's 2nd transaction
    lines: list[str] = field(default_factory=list)  # every command line, in order
    messages: list[SinkMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def verbs(self) -> list[str]:
        """The command verbs in arrival order."""
        with self.lock:
            return [line.split(" ", 1)[0].upper() for line in self.lines]


def _decode(value: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


class _ForwardSMTP(SMTP):
    def __init__(self, sink: ForwardSink, *args: Any, **kwargs: Any) -> None:
        self.attrs: dict[str, str] = {}
        self.transactions = 0  # counted at the first XFORWARD of each
        super().__init__(*args, **kwargs)
        self.sink = sink

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self.attrs = {}  # Postfix: reset at the end of every transaction

    async def _note(self, line: str) -> None:
        with self.sink.lock:
            self.sink.lines.append(line)

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str | None) -> None:
        await self._note(f"XFORWARD {arg or ''}".strip())
        if self.sink.offer is None:
            await self.push('500 Error: command "XFORWARD" not recognized')
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        if self.sink.refuse_with is not None:
            await self.push(self.sink.refuse_with)
            return
        self.transactions += 0 if self.attrs else 1
        if self.sink.hang_up_on_reuse and self.transactions == 2:
            await self.push("421 4.3.2 sink.test shutting down")
            assert self.transport is not None
            self.transport.close()
            return
        for word in (arg or "").split():
            name, _, value = word.partition("=")
            self.attrs[name.upper()] = _decode(value)
        await self.push("250 2.0.0 Ok")


class _Handler:
    def __init__(self, sink: ForwardSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        await server._note(f"EHLO {hostname}")
        if self.sink.offer is not None:
            responses.insert(len(responses) - 1, f"250-XFORWARD {self.sink.offer}")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        await server._note(f"MAIL {address}")
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        await server._note(f"RCPT {address}")
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await server._note("DATA")
        message = SinkMessage(
            envelope.mail_from, bytes(envelope.original_content), dict(server.attrs)
        )
        with self.sink.lock:
            self.sink.messages.append(message)
        return "250 2.0.0 Ok: queued as FWD1"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        await server._note("RSET")
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        await server._note("QUIT")
        return "221 2.0.0 Bye"


class _Controller(Controller):
    def __init__(self, sink: ForwardSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def factory(self) -> SMTP:
        return _ForwardSMTP(self._sink, self.handler, **self.SMTP_kwargs)


@contextmanager
def running_forward_sink(
    offer: str | None = ALL, refuse_with: str | None = None, hang_up_on_reuse: bool = False
) -> Iterator[ForwardSink]:
    """The sink on a free loopback port for the duration of the block."""
    sink = ForwardSink(
        free_port(), offer=offer, refuse_with=refuse_with, hang_up_on_reuse=hang_up_on_reuse
    )
    controller = _Controller(
        sink,
        _Handler(sink),
        hostname="127.0.0.1",
        port=sink.port,
        server_hostname="sink.test",
        ready_timeout=10.0,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
