"""Every SMTP reply cm-gateway sends, in one place, with its enhanced status code.

Tests assert against these names, never against string literals (as aiosmtpd's
``testing/statuscodes.py`` does).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "BAD_RECIPIENT_SYNTAX",
    "BAD_SENDER_SYNTAX",
    "BARE_CR",
    "BARE_LF",
    "CLASSIFIER_DEFER",
    "CLIENT_CONNECTION_LIMIT",
    "COMMAND_TOO_LONG",
    "DATA_LINE_TOO_LONG",
    "DOWNSTREAM_AUTH_FAILED",
    "DOWNSTREAM_NO_SMTPUTF8",
    "DOWNSTREAM_NO_TLS",
    "DOWNSTREAM_PARTIAL",
    "DOWNSTREAM_TEMPFAIL",
    "DOWNSTREAM_TLS_FAILED",
    "IDLE_TIMEOUT",
    "INTERNAL_ERROR",
    "LOOP_DETECTED",
    "OK",
    "PROCESSING_TIMEOUT",
    "RELAY_DENIED",
    "SHUTTING_DOWN",
    "SMTPUTF8_REQUIRED",
    "TOO_BIG",
    "TOO_MANY_CONNECTIONS",
    "TOO_MANY_RECIPIENTS",
    "TOO_MANY_RECIPIENTS_CLOSING",
    "XFORWARD_BAD_ATTRIBUTE",
    "XFORWARD_IN_TRANSACTION",
    "XFORWARD_NOT_PERMITTED",
    "XFORWARD_SYNTAX",
    "Reply",
    "queued",
    "rule_defer",
    "rule_reject",
    "xforward_bad_value",
]


class Reply(NamedTuple):
    """One SMTP reply: basic code, enhanced code and text."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600


OK = Reply(250, "2.0.0", "Ok")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
# A client that goes on sending RCPTs long after 452 (Postfix: smtpd_recipient_overshoot_limit).
TOO_MANY_RECIPIENTS_CLOSING = Reply(421, "4.5.3", "Too many recipients, closing connection")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds limit")
BARE_LF = Reply(550, "5.6.11", "Bare LF not allowed")
LOOP_DETECTED = Reply(554, "5.4.6", "Too many hops, mail loop detected")
CLASSIFIER_DEFER = Reply(451, "4.4.3", "Classifier unavailable, try again later")
DOWNSTREAM_TEMPFAIL = Reply(451, "4.4.1", "Next hop unavailable, try again later")
DOWNSTREAM_PARTIAL = Reply(451, "4.5.0", "Next hop refused some recipients, try again later")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error")
# RFC 6531 §3.2: a non-ASCII envelope cannot go to a next hop without SMTPUTF8.
DOWNSTREAM_NO_SMTPUTF8 = Reply(554, "5.6.7", "Next hop does not support SMTPUTF8 addresses")
# Next hop security (deliver/_security.py): each a 4xx, so the sending MTA keeps the message.
DOWNSTREAM_NO_TLS = Reply(451, "4.7.10", "Next hop offers no TLS, try again later")
DOWNSTREAM_TLS_FAILED = Reply(451, "4.7.5", "Next hop TLS failed, try again later")
DOWNSTREAM_AUTH_FAILED = Reply(451, "4.7.8", "Next hop refused our credentials, try again later")
# SMTP front (server.py / handler.py)
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
SMTPUTF8_REQUIRED = Reply(553, "5.6.7", "Must declare SMTPUTF8 to send a non-ASCII address")
BARE_CR = Reply(550, "5.6.11", "Bare CR not allowed")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections")
CLIENT_CONNECTION_LIMIT = Reply(421, "4.7.0", "Too many connections from your address")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down")
PROCESSING_TIMEOUT = Reply(451, "4.3.0", "Timed out processing the message, try again later")
# aiosmtpd's own wording for these has no enhanced code (server.py rewrites it).
# RFC 5321 §4.5.3.1.4/§4.5.3.1.6: command lines <= 512 octets, text lines <= 1000.
COMMAND_TOO_LONG = Reply(500, "5.5.2", "Command line too long")
DATA_LINE_TOO_LONG = Reply(554, "5.6.0", "Message line too long (limit 1 MiB)")
# Sent before closing a session idle (or stuck in DATA) for smtp.timeout, as Postfix does.
IDLE_TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded")
# XFORWARD (trusted peers only; Postfix's smtpd wording). Success is OK.
XFORWARD_SYNTAX = Reply(501, "5.5.4", "Syntax: XFORWARD attribute=value...")
XFORWARD_BAD_ATTRIBUTE = Reply(501, "5.5.4", "Bad XFORWARD attribute name")
XFORWARD_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
XFORWARD_NOT_PERMITTED = Reply(550, "5.7.0", "Error: insufficient authorization")


def queued(queue_id: str) -> Reply:
    """The reply to DATA once the next hop has the message."""
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def xforward_bad_value(attribute: str) -> Reply:
    """An XFORWARD value that does not validate; ``attribute`` is one of the names we
    advertise (never client text)."""
    return Reply(501, "5.5.4", f"Bad XFORWARD {attribute} syntax")


def _one_line(text: str, default: str) -> str:
    # Reply texts come from rule files; a CR/LF would let a rule author inject a
    # second reply line, so fold any control character to a space.
    cleaned = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).strip()
    return cleaned[:400] or default


def rule_reject(text: str) -> Reply:
    """The reply to a rule's ``reject`` action."""
    return Reply(550, "5.7.1", _one_line(text, "Message rejected by policy"))


def rule_defer(text: str) -> Reply:
    """The reply to a rule's ``defer`` action."""
    return Reply(451, "4.7.1", _one_line(text, "Message deferred by policy"))
