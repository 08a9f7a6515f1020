"""A decision as edits for an MTA that delivers the message itself (the milter front).

Same decision, same headers as the SMTP front's delivery: only the form differs. The
values are made safe here (``safe_header_value``: no CR/LF from the API, RFC 2047 when
not ASCII, folded with CRLF), as ``prepend_headers`` does for the SMTP front.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.mail import (
    apply_subject_prefix,
    header_fields,
    header_name_matcher,
    safe_header_value,
)
from gateway.rules import Decision

from ._inbound import InboundMessage, MessageEdits
from ._prepare import HEADER_PREFIX

__all__ = ["message_edits"]

Fields = Sequence[tuple[str, str]]


def _removed(
    msg: InboundMessage, fields: Fields, decision: Decision, forged: Sequence[str]
) -> tuple[str, ...]:
    """Names of the fields to delete (each name once): from an untrusted client, every
    ``X-CM-*`` field and each of ``forged`` (a name, or a prefix ending in ``*``), as
    the SMTP front strips them; and, enforced, what the rules' ``remove_header`` names."""
    forbidden = header_name_matcher(HEADER_PREFIX, forged)
    removing = {n.lower() for n in decision.remove_headers} if not decision.audit else set()
    seen: dict[str, str] = {}
    for name, _ in fields:
        untrusted = not msg.trusted_peer and forbidden(name)
        if untrusted or name.lower() in removing:
            seen.setdefault(name.lower(), name)
    return tuple(seen.values())


def _subject(fields: Fields, prefixes: Sequence[str]) -> str | None:
    old = next((v for n, v in fields if n.lower() == "subject"), "")
    new = old
    for prefix in reversed(prefixes):  # as the SMTP front applies them
        new = apply_subject_prefix(new, prefix)
    new = new.strip() if not old else new
    if new == old or not new:
        return None
    return safe_header_value(new, name="Subject")


def message_edits(
    msg: InboundMessage,
    decision: Decision,
    headers: Sequence[tuple[str, str]],
    forged: Sequence[str] = (),
) -> MessageEdits:
    """The edits for ``decision``; ``headers`` are the gateway's fields (not yet safe),
    already reduced to the classification headers in audit mode; ``forged``: the header
    names an untrusted client may not set besides ``X-CM-*``."""
    fields = header_fields(msg.content)  # read once, for the deletions and the subject
    removed = _removed(msg, fields, decision, forged)
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
        subject=_subject(fields, decision.subject_prefixes),
        recipients=recipients,
    )
