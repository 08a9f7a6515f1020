"""Trace fields: our ``Received`` line (RFC 5321 §4.4) and the hop count of a message."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import formatdate

from gateway.mail import header_block

from ._inbound import InboundMessage

__all__ = ["count_hops", "received_header"]

_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
# The last date written, by the UTC second it names: messages arrive many per second and
# formatdate (local time zone, strftime) was a third of the cost of our trace field.
_last_date: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")


def _rfc5322_date(timestamp: float) -> str:
    """``formatdate(timestamp, localtime=True)``, computed once per second."""
    global _last_date
    # The key is the second formatdate itself works from (it converts with this call,
    # rounding to the microsecond), so the text depends on nothing else.
    second = datetime.fromtimestamp(timestamp, UTC).replace(microsecond=0)
    last = _last_date  # read once: another thread may replace it meanwhile
    if last[0] != second:
        last = _last_date = (second, formatdate(timestamp, localtime=True))
    return last[1]


def count_hops(raw: bytes) -> int:
    """The number of ``Received`` fields in the header block."""
    return sum(
        1
        for line in header_block(raw).split(b"\n")
        if line[:9].lower() == b"received:" or line[:9].lower() == b"received "
    )


def received_header(msg: InboundMessage, hostname: str) -> str:
    """Our trace field (RFC 5321 §4.4), e.g. ``from mx.example ([192.0.2.1]) by gw
    (cm-gateway) with ESMTPS id 4Xq2; <date>``. No ``for`` clause: it would disclose
    Bcc recipients.

    The ``from`` part is always our real peer, also when it sent XFORWARD: a trace field
    records who handed us the message, and the original client is already in the
    upstream MTA's own Received line. Postfix's smtpd and amavis do the same (XFORWARD
    only changes what they log); we add no "forwarded for" comment either, which would
    repeat it on the word of the peer."""
    helo = _HELO_UNSAFE.sub("?", msg.helo)[:100] or "unknown"
    protocol = ("UTF8SMTP" if msg.smtp_utf8 else "ESMTP") + ("S" if msg.tls else "")
    if msg.authenticated_user:
        protocol += "A"
    date = _rfc5322_date(msg.received_at)
    return (
        f"from {helo} ([{msg.peer_ip}]) by {hostname} (cm-gateway) with {protocol}"
        f" id {msg.queue_id}; {date}"
    )
