"""A trivial after-queue content filter: proves the Postfix harness without the gateway.

It accepts mail from Postfix's smtp-cmgw transport and relays it, with one header
prepended, to the reinjection smtpd, exactly the way the gateway does. ``reply`` makes it
answer DATA with a fixed SMTP reply instead (e.g. a 451 or a 550).

Not a next hop (``gateway.testing.NextHopSink`` is one): it relays, as the gateway does.
"""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["PassThroughFilter"]


class _Handler:
    def __init__(self, owner: PassThroughFilter) -> None:
        self._owner = owner

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self._owner.reply
        if reply is not None:
            self._owner.refused += 1
            return reply
        data = b"X-Harness-Filter: passed\r\n" + bytes(envelope.original_content or b"")
        mail_from = envelope.mail_from or ""
        rcpts = list(envelope.rcpt_tos)
        try:
            await asyncio.to_thread(self._owner._relay, mail_from, rcpts, data)
        except (OSError, smtplib.SMTPException) as exc:
            return f"451 4.4.1 next hop failed: {type(exc).__name__}"
        self._owner.relayed += 1
        return "250 2.0.0 Ok: relayed"


class PassThroughFilter:
    """Listens on 127.0.0.1:``port``; relays to 127.0.0.1:``next_hop_port``."""

    def __init__(self, port: int, next_hop_port: int) -> None:
        self.port = port
        self.next_hop_port = next_hop_port
        self.reply: str | None = None
        self.relayed = 0
        self.refused = 0
        self._controller: Controller | None = None

    def _relay(self, mail_from: str, rcpts: list[str], data: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.next_hop_port, timeout=15) as client:
            client.ehlo("filter.harness.test")
            client.sendmail(mail_from, rcpts, data)

    def start(self) -> PassThroughFilter:
        """Start listening."""
        self._controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="filter.harness.test",
            ready_timeout=10.0,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
