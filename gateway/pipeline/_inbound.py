"""The seam between the SMTP front and the message pipeline.

The server (``gateway.smtp._server``) turns one SMTP transaction into an ``InboundMessage`` and
awaits ``MessageProcessor.process`` for the one reply to DATA. The pipeline
(``gateway.pipeline._pipeline``) implements the processor: classify, apply rules, deliver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway.deliver import XForward, from_session
from gateway.replies import Reply

__all__ = ["InboundMessage", "MessageDecider", "MessageEdits", "MessageProcessor"]


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One accepted SMTP transaction, as it reached the end of DATA.

    ``content`` is the message as received: CRLF line endings, dot-unstuffed (with
    ``bare_lf = "normalize"`` lone CR/LF have already been rewritten to CRLF).
    ``mail_from`` is ``""`` for the null sender. ``trusted_peer`` is True when the client's
    address is in ``smtp.trusted_networks``: only then may its ``X-CM-*`` headers stay.
    ``queue_id`` is the short id of this transaction (also in ``250 ... queued as``).
    ``received_at`` is ``time.time()`` when DATA ended. ``forwarded`` holds the XFORWARD
    attributes a trusted peer sent for this transaction (None when it sent none);
    ``peer_port`` and ``esmtp`` (EHLO rather than HELO) describe our own peer.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    peer_ip: str
    helo: str
    smtp_utf8: bool
    mail_options: tuple[str, ...]
    tls: bool
    authenticated_user: str | None
    trusted_peer: bool
    queue_id: str
    received_at: float
    forwarded: XForward | None = None
    peer_port: int | None = None
    esmtp: bool = True

    def next_hop_xforward(self) -> XForward:
        """What to XFORWARD to the next hop: the attributes that came in, else our own
        client's, with our queue id as IDENT (what Postfix's smtp client sends a content
        filter). Never a mix of the two (XFORWARD_README note 4)."""
        if self.forwarded is not None:
            return self.forwarded
        return from_session(
            addr=self.peer_ip or None,
            port=self.peer_port,
            proto="ESMTP" if self.esmtp else "SMTP",
            helo=self.helo or None,
            ident=self.queue_id or None,
            source="REMOTE",
        )


@runtime_checkable
class MessageProcessor(Protocol):
    """What the SMTP front hands each message to.

    ``process`` returns the reply to DATA (``replies.queued(msg.queue_id)`` once the next
    hop has it). An exception is answered ``451 4.3.0`` and logged by type only (never a
    5xx: the sending MTA keeps the message and retries). An optional
    ``async def aclose()`` is awaited once at shutdown.
    """

    async def process(self, msg: InboundMessage) -> Reply: ...


@dataclass(frozen=True, slots=True)
class MessageEdits:
    """The pipeline's decision for a message that the MTA itself delivers (the milter
    front): what to refuse, or how to change the message in the MTA's queue.

    ``reply``: refuse the message with it (reject, defer, classifier down with
    ``on_error = "defer"``, mail loop, internal error); the other fields are then empty.
    ``discard``: accept and drop. ``hold``: the reason to put it in the MTA's hold queue.
    ``headers``: fields to insert on top, in order, values already made safe (folded
    with CRLF). ``removed``: names of fields to delete, every occurrence (forged
    ``X-CM-*``). ``subject``: the new Subject value (safe, folded), None = unchanged.
    ``recipients``: the new envelope recipients, None = unchanged. ``verdict`` is for logs.
    """

    verdict: str
    reply: Reply | None = None
    discard: bool = False
    hold: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    removed: tuple[str, ...] = ()
    subject: str | None = None
    recipients: tuple[str, ...] | None = None


@runtime_checkable
class MessageDecider(Protocol):
    """What the milter front hands each message to: the decision as edits, nothing
    delivered (the MTA delivers). Raising anything is answered ``451 4.3.0``."""

    async def decide(self, msg: InboundMessage) -> MessageEdits: ...
