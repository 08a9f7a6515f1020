"""What the test sink accepted (``ReceivedMessage``) and what it does (``SinkBehaviour``)."""

from __future__ import annotations

import email
import email.policy
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

__all__ = ["ReceivedMessage", "SinkBehaviour", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the sink accepted: envelope, exact bytes, and what came with it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer: str = ""
    mail_options: tuple[str, ...] = ()
    forwarded: dict[str, str] = field(default_factory=dict)  # XFORWARD attributes in force
    connection: int = 0
    received_at: float = field(default_factory=time.time)

    @property
    def content(self) -> bytes:
        """The same as ``data``."""
        return self.data

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


@dataclass
class SinkBehaviour:
    """What the sink does; every field may be changed while it runs.

    Replies are full SMTP reply lines (``"451 4.3.0 Try again"``); a ``421`` reply to MAIL
    or DATA is followed by hanging up, as a server that says it closes does."""

    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply
    mail_reply: str | None = None  # to every MAIL FROM instead of 250
    data_reply: str | None = None  # to every DATA instead of accepting
    # Per message: the reply to its DATA (None: accept). Called before it is recorded.
    reply_for: Callable[[ReceivedMessage], str | None] | None = None
    data_delay: float = 0.0  # seconds before answering DATA
    queue_id: str = "SINK42"
    smtputf8: bool = True
    pipelining: bool = False  # aiosmtpd takes pipelined commands either way
    xforward: str | None = None  # the XFORWARD keyword's attributes; None: not offered
    xforward_reply: str | None = None  # e.g. "501 5.5.4 Bad NAME syntax"
    hang_up_after_data: bool = False  # close right after answering DATA
    die_at_rset: bool = False  # close on RSET without a reply
    mail_421_on_reuse: bool = False  # 421 to the 2nd MAIL FROM of a connection
    data_421_once: bool = False  # 421 to the first DATA of the run
    xforward_421_on_reuse: bool = False  # 421 at a connection's 2nd XFORWARD transaction
