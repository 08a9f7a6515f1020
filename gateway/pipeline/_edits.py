"""A decision as edits for an MTA that delivers the message itself (the milter front).

Same decision, same headers as the SMTP front's delivery: only the form differs. The
values are made safe here (``safe_header_value``: no CR/LF from the API, RFC 2047 when
not ASCII, folded with CRLF), as ``prepend_headers`` does for the SMTP front.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.context import MessageContext
from gateway.mail import apply_subject_prefix, header_fields, safe_header_value
from gateway.rules import Decision

from ._inbound import InboundMessage, MessageEdits
from ._prepare import HEADER_PREFIX

__all__ = ["message_edits"]


def _removed(msg: InboundMessage) -> tuple[str, ...]:
    """Names of the ``X-CM-*`` fields an untrusted client sent (each name once)."""
    if msg.trusted_peer:
        return ()
    prefix = HEADER_PREFIX.lower()
    seen: dict[str, str] = {}
    for name, _ in header_fields(msg.content):
        if name.lower().startswith(prefix):
            seen.setdefault(name.lower(), name)
    return tuple(seen.values())


def _subject(msg: InboundMessage, prefixes: Sequence[str]) -> str | None:
    old = next((v for n, v in header_fields(msg.content) if n.lower() == "subject"), "")
    new = old
    for prefix in reversed(prefixes):  # as the SMTP front applies them
        new = apply_subject_prefix(new, prefix)
    new = new.strip() if not old else new
    if new == old or not new:
        return None
    return safe_header_value(new, name="Subject")


def message_edits(
    msg: InboundMessage,
    ctx: MessageContext,
    decision: Decision,
    headers: Sequence[tuple[str, str]],
) -> MessageEdits:
    """The edits for ``decision``; ``headers`` are the gateway's fields (not yet safe),
    already reduced to the classification headers in audit mode."""
    removed = _removed(msg)
    # Names are the gateway's own or validated by the rule loader.
    safe = tuple((name, safe_header_value(value, name=name)) for name, value in headers)
    if decision.audit:
        return MessageEdits(verdict="deliver", headers=safe, removed=removed)
    verdict = decision.verdict
    if verdict in ("reject", "defer") and decision.reply is not None:
        return MessageEdits(verdict=verdict, reply=decision.reply)
    if verdict == "discard" or not decision.recipients:
        return MessageEdits(verdict="discard", discard=True)
    recipients = None if decision.recipients == msg.rcpt_tos else decision.recipients
    return MessageEdits(
        verdict=verdict,
        hold=decision.hold,
        headers=safe,
        removed=removed,
        subject=_subject(msg, decision.subject_prefixes),
        recipients=recipients,
    )
