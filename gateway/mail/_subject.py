"""Idempotent subject tagging, as a pure function on the decoded subject text.

A prefix is not added again when the subject already carries it among its leading
tokens: reply/forward markers (``Re:``, ``Fwd:``, ``AW:``, ``RE[2]:``...) and bracketed
tags (``[External]``). So ``[X] hello``, ``Re: [X] hello`` and ``[Ext] Re: [X] hello``
stay as they are, and no sequence of tagging ever yields ``[X] [X] ...``.
The comparison ignores case and surrounding white space.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["apply_subject_prefix", "apply_subject_prefixes"]

# Reply/forward markers in common mail clients' languages (en, de, nl, nordic, fr, it, es...).
_LEADING = re.compile(
    r"""\s*(?:
        (?:re|fwd?|aw|wg|sv|vs|antw|doorst|tr|rif|r|i|enc|res|odp|přes|vb)
        (?:\s*\[\d+\]|\s*\(\d+\))?\s*:
      | \[[^\[\]]*\]
    )""",
    re.IGNORECASE | re.VERBOSE,
)


def _has_prefix(subject: str, tag: str) -> bool:
    folded = subject.casefold()
    tag = tag.casefold()
    pos = 0
    while True:
        rest = folded[pos:].lstrip()
        if rest.startswith(tag):
            return True
        match = _LEADING.match(folded, pos)
        if match is None or match.end() == pos:
            return False
        pos = match.end()


def apply_subject_prefix(subject: str, prefix: str) -> str:
    """``prefix`` + ``subject``, unless the subject already carries the prefix.

    A prefix that does not end in white space gets one space before a non-empty subject
    (``"SPAM:"`` -> ``"SPAM: hello"``). A blank prefix changes nothing."""
    tag = prefix.strip()
    if not tag:
        return subject
    if _has_prefix(subject, tag):
        return subject
    if not subject:
        return tag
    if prefix[-1].isspace() or subject[0].isspace():
        return prefix + subject
    return f"{prefix} {subject}"


def apply_subject_prefixes(subject: str, prefixes: Iterable[str]) -> str:
    """Apply ``Decision.subject_prefixes`` so that they read in rule order:
    ``["[A] ", "[B] "]`` on ``hello`` gives ``[A] [B] hello``."""
    for prefix in reversed(list(prefixes)):
        subject = apply_subject_prefix(subject, prefix)
    return subject
