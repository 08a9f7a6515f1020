"""Secrets registry: values that must never appear in a log line, reply or output.

A registered secret is also scrubbed in base64 (standard and URL-safe alphabets, at each of
the three offsets a base64 run can start it at): an API or proxy that echoes a request's
credentials back may encode them (found by tests/reliability/test_secrets_and_headers.py:
a 429 body quoting ``base64("Bearer <token>")`` reached the retry log line).
"""

from __future__ import annotations

import base64

__all__ = ["REDACTED", "contains_secret", "register_secret", "scrub"]

_SECRETS: set[str] = set()
REDACTED = "[REDACTED]"


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line. Short values are ignored: scrubbing "a"
    would mangle every line and protect nothing."""
    if value and len(value) >= 6:
        _SECRETS.add(value)
        _SECRETS.update(_base64_forms(value))


def _base64_forms(value: str) -> set[str]:
    # The middle of the encoding, without the characters that depend on the bytes around
    # the secret; also covers "Bearer <secret>" and "user:<secret>" encoded as a whole.
    forms: set[str] = set()
    raw = value.encode("utf-8", "surrogatepass")
    for prefix in (b"", b"x", b"xx"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(prefix + raw).decode("ascii")
            middle = encoded[4 if prefix else 0 : -4]
            if len(middle) >= 8:
                forms.add(middle)
    return forms


def contains_secret(text: str) -> bool:
    """True when some registered secret occurs in ``text`` (``scrub`` would change it)."""
    # A loop of ``in`` tests: str.__contains__ is a fast C substring search, quicker
    # than one alternation regex over the dozen forms a couple of secrets make; a plain
    # loop, not any() over a generator, which costs a frame per call.
    for secret in _SECRETS:  # noqa: SIM110
        if secret in text:
            return True
    return False


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text
