"""What a delivery reports: ``DeliveryResult``, and the next hop's replies mapped to ours.

SMTP result mapping (README "SMTP replies"):

- every recipient accepted and DATA accepted -> 250, with the next hop's own reply kept
  for the log (and its queue id, if it said ``queued as <id>``);
- some recipients refused -> ``DOWNSTREAM_PARTIAL`` (451). One reply to DATA covers all
  recipients: a 250 would silently lose the refused ones and a 5xx would bounce the
  accepted ones, who already have it. With a 4xx the sending MTA retries the whole
  message; the accepted recipients may then receive it twice, which is the lesser harm;
- every recipient refused with 5xx, sender refused with 5xx, DATA refused with 5xx ->
  that 5xx (code and enhanced code from the next hop's text);
- any 4xx, a mix of 4xx and 5xx refusals, connection refused, timeout, disconnect, an
  error in the greeting or EHLO -> ``DOWNSTREAM_TEMPFAIL`` (451).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiosmtplib

from gateway import replies
from gateway.replies import Reply

__all__ = [
    "DeliveryResult",
    "describe_error",
    "parse_reply",
    "recipients_refused",
    "sender_or_data_refused",
]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What happened at the next hop.

    ``reply`` is what our client should hear (for a success the pipeline answers with its
    own queue id instead); ``next_hop`` is the next hop's own reply to DATA, or the
    refusal that decided ``reply`` (None when it was never reached); ``refused`` lists
    per-recipient refusals; ``queue_id`` is the next hop's id when it said one.
    """

    reply: Reply
    next_hop: Reply | None = None
    refused: Mapping[str, Reply] = field(default_factory=dict)
    queue_id: str | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return 200 <= self.reply.code < 300


def _one_line(text: str) -> str:
    # The next hop's text goes back to our client: no line breaks may survive, or it
    # could end our reply early and inject a second one.
    cleaned = " ".join("".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).split())
    return cleaned[:400]


def parse_reply(code: int, message: str) -> Reply:
    """An SMTP reply from its code and text, the enhanced code taken from the text when
    it has one of the same class (``550``, ``"5.1.1 no such user"``)."""
    text = _one_line(message)
    match = _ENHANCED.match(text)
    klass = code // 100
    if match and int(match.group(1)) == klass:
        enhanced = ".".join(match.group(1, 2, 3))
        text = text[match.end() :]
    else:
        enhanced = f"{klass}.0.0" if klass in (2, 4, 5) else "4.0.0"
    return Reply(code, enhanced, text or "(no text)")


def describe_error(exc: BaseException) -> str:
    """An exception for the log line, on one line (``"timeout"`` for a bare timeout)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timeout"
    return f"{type(exc).__name__}: {_one_line(str(exc))}"


def sender_or_data_refused(code: int, message: str, what: str) -> DeliveryResult:
    """A refusal of the sender or of DATA: a 5xx as it came, anything else a 451."""
    reply = parse_reply(code, message)
    if reply.is_permanent:
        return DeliveryResult(reply, next_hop=reply, error=what)
    return DeliveryResult(replies.DOWNSTREAM_TEMPFAIL, next_hop=reply, error=what)


def recipients_refused(exc: aiosmtplib.SMTPRecipientsRefused) -> DeliveryResult:
    """Every recipient refused: their 5xx when all are permanent, else a 451."""
    by_rcpt = {r.recipient: parse_reply(r.code, r.message) for r in exc.recipients}
    permanent = [reply for reply in by_rcpt.values() if reply.is_permanent]
    if by_rcpt and len(permanent) == len(by_rcpt):
        # Every recipient is refused for good: the sender should hear why.
        return DeliveryResult(
            permanent[0], next_hop=permanent[0], refused=by_rcpt, error="recipients refused"
        )
    first = next(iter(by_rcpt.values()), None)
    return DeliveryResult(
        replies.DOWNSTREAM_TEMPFAIL, next_hop=first, refused=by_rcpt, error="recipients refused"
    )
