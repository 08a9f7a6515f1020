"""An SMTP sink for integration tests: records every message it accepts.

It runs aiosmtpd's ``Controller`` (a thread with its own loop) on loopback, so tests in
any thread can wait for messages with :meth:`SmtpSink.wait_for`. It can be stopped and
started again on the same port to play a next hop that is down.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

__all__ = ["ReceivedMessage", "SmtpSink"]


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the sink accepted it (envelope + raw bytes)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer: str
    received_at: float = field(default_factory=time.time)

    @property
    def message(self) -> EmailMessage:
        """The parsed message (stdlib, ``policy.default``)."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (decoded), or None."""
        value = self.message.get(name)
        return None if value is None else str(value)

    def headers(self, name: str) -> list[str]:
        """Every value of header ``name`` (decoded), in message order."""
        return [str(v) for v in self.message.get_all(name, [])]

    @property
    def subject(self) -> str:
        """The decoded Subject ("" when absent)."""
        return self.header("Subject") or ""

    @property
    def is_bounce(self) -> bool:
        """True for a delivery status notification (null envelope sender)."""
        return self.mail_from in ("", "<>")


class _Recorder:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or b""
        self._sink._record(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(data),
                peer=str(session.peer[0]) if session.peer else "",
            )
        )
        return "250 2.0.0 Ok: recorded"


class _PostfixLikeSMTP(SMTP):
    # Postfix's smtpd accepts lines of any length (it stores them in pieces); aiosmtpd
    # refuses past 1,000 octets. The sink plays Postfix's reinjection listener.
    line_length_limit = 1 << 21


class _SinkController(Controller):
    def factory(self) -> SMTP:
        return _PostfixLikeSMTP(self.handler, **self.SMTP_kwargs)


class SmtpSink:
    """A recording SMTP server on ``127.0.0.1:port`` (port 0 picks a free one)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._messages: list[ReceivedMessage] = []
        self._cond = threading.Condition()
        self._controller: Controller | None = None

    def start(self) -> SmtpSink:
        """Start listening (again, on the same port once one was picked)."""
        if self._controller is not None:
            return self
        if self.port == 0:
            # Controller's self-test connects to the configured port, so 0 cannot work.
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((self.host, 0))
                self.port = int(s.getsockname()[1])
        controller = _SinkController(
            _Recorder(self),
            hostname=self.host,
            port=self.port,
            server_hostname="sink.harness.test",
            ident="harness sink",
            ready_timeout=10.0,
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

        Raises ``TimeoutError`` naming what did arrive, so a failing test says why.
        """
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
