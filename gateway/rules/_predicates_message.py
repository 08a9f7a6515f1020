"""Conditions on the message itself (headers, envelope, size, attachments), compiled into
small callable objects; the predicate protocol is in ``_predicates``."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._addresses import AddressMatcher
from ._facts import Facts
from ._predicates import Verdict, _bounds, _bounds_text, glob_regex

__all__ = [
    "AttachmentIs",
    "EnvelopeFrom",
    "EnvelopeTo",
    "HeaderContains",
    "HeaderExists",
    "HeaderMatches",
    "SizeIs",
    "ThreadMatched",
]


class HeaderMatches:
    """``header: {name, matches}``: one decoded value where the regex finds a match."""

    __slots__ = ("name", "regex", "text")

    def __init__(self, name: str, pattern: str) -> None:
        self.name = name
        self.regex = re.compile(pattern)
        self.text = f"header {name} ~ /{pattern}/"

    def __call__(self, facts: Facts) -> Verdict:
        values = facts.ctx.header_values(self.name)
        for value in values:
            match = self.regex.search(value)
            if match is not None:
                return True, f"header {self.name} matches /{self.regex.pattern}/ at {match[0]!r}"
        if not values:
            return False, f"header {self.name} absent"
        return False, f"header {self.name} does not match /{self.regex.pattern}/"


class HeaderContains:
    """``header: {name, contains}``: case-insensitive substring of one decoded value."""

    __slots__ = ("name", "needle", "text")

    def __init__(self, name: str, needle: str) -> None:
        self.name = name
        self.needle = needle.casefold()
        self.text = f"header {name} contains {needle!r}"

    def __call__(self, facts: Facts) -> Verdict:
        values = facts.ctx.header_values(self.name)
        for value in values:
            if self.needle in value.casefold():
                return True, f"header {self.name} contains {self.needle!r}"
        if not values:
            return False, f"header {self.name} absent"
        return False, f"header {self.name} does not contain {self.needle!r}"


class HeaderExists:
    """``header: {name, exists: true|false}``."""

    __slots__ = ("exists", "name", "text")

    def __init__(self, name: str, exists: bool) -> None:
        self.name = name
        self.exists = exists
        self.text = f"header {name} {'exists' if exists else 'absent'}"

    def __call__(self, facts: Facts) -> Verdict:
        present = bool(facts.ctx.header_values(self.name))
        return present == self.exists, f"header {self.name} {'present' if present else 'absent'}"


def _patterns_text(matchers: Sequence[AddressMatcher]) -> str:
    return ", ".join(m.pattern for m in matchers)


class EnvelopeFrom:
    """``from``: the envelope sender matches one of the patterns."""

    __slots__ = ("label", "matchers", "source", "text")

    def __init__(self, matchers: Sequence[AddressMatcher], label: str | None = None) -> None:
        self.matchers = tuple(matchers)
        # A list file may hold hundreds of patterns: explain names the list instead.
        self.label = label or _patterns_text(self.matchers)
        self.source = f" ({label})" if label else ""
        self.text = f"from {self.label}"

    def __call__(self, facts: Facts) -> Verdict:
        sender = facts.mail_from
        shown = sender or "<>"
        for matcher in self.matchers:
            if matcher(sender):
                return True, f"from {shown} matches {matcher.pattern}{self.source}"
        return False, f"from {shown} matches none of {self.label}"


class EnvelopeTo:
    """``to``: one envelope recipient matches one of the patterns."""

    __slots__ = ("label", "matchers", "source", "text")

    def __init__(self, matchers: Sequence[AddressMatcher], label: str | None = None) -> None:
        self.matchers = tuple(matchers)
        # A list file may hold hundreds of patterns: explain names the list instead.
        self.label = label or _patterns_text(self.matchers)
        self.source = f" ({label})" if label else ""
        self.text = f"to {self.label}"

    def __call__(self, facts: Facts) -> Verdict:
        for rcpt in facts.rcpts:
            for matcher in self.matchers:
                if matcher(rcpt):
                    return True, f"to {rcpt} matches {matcher.pattern}{self.source}"
        return False, f"no recipient matches {self.label}"


class SizeIs:
    """``size: {above, below}`` in bytes, strict."""

    __slots__ = ("above", "below", "text")

    def __init__(self, above: int | None, below: int | None) -> None:
        self.above = above
        self.below = below
        self.text = f"size {_bounds_text(above, below)} bytes"

    def __call__(self, facts: Facts) -> Verdict:
        held, seen = _bounds(facts.ctx.size, self.above, self.below)
        return held, f"size {seen} bytes"


class AttachmentIs:
    """``attachment: {name, content_type}``: one attachment matching every glob given."""

    __slots__ = ("content_type", "name", "text")

    def __init__(self, name: str | None, content_type: str | None) -> None:
        self.name = glob_regex(name) if name is not None else None
        self.content_type = glob_regex(content_type) if content_type is not None else None
        bits = []
        if name is not None:
            bits.append(f"name {name}")
        if content_type is not None:
            bits.append(f"content_type {content_type}")
        self.text = "attachment " + " ".join(bits)

    def __call__(self, facts: Facts) -> Verdict:
        for att in facts.ctx.attachments:
            if self.name is not None and self.name.match(att.name) is None:
                continue
            if self.content_type is not None and self.content_type.match(att.content_type) is None:
                continue
            return True, f"attachment {att.name!r} ({att.content_type})"
        return False, f"no {self.text}"


class ThreadMatched:
    """``thread: {matched: RULE}``: an earlier message of this conversation matched RULE
    (the pipeline looks the conversation up before the rules run)."""

    __slots__ = ("rule", "text")

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.text = f"thread matched {rule}"

    def __call__(self, facts: Facts) -> Verdict:
        earlier = facts.ctx.thread_matched
        if self.rule in earlier:
            return True, f"an earlier message of this thread matched {self.rule}"
        if not earlier:
            return False, f"no earlier message of this thread matched {self.rule}"
        seen = ", ".join(sorted(earlier))
        return False, f"earlier messages of this thread matched {seen}, not {self.rule}"
