"""Secrets registry: values that must never appear in a log line, reply or output."""

from __future__ import annotations

__all__ = ["REDACTED", "register_secret", "scrub"]

_SECRETS: set[str] = set()
REDACTED = "[REDACTED]"


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line. Short values are ignored: scrubbing "a"
    would mangle every line and protect nothing."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text
