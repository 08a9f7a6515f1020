"""Conditions compiled into small callable objects.

A predicate is called with the evaluation's ``Facts`` and returns ``(held, why)``: why it
held (the condition and the values it saw, e.g. ``label 'Finance > Invoice' probability
0.92 >= 0.7``) or why it did not. ``text`` is the condition itself, for ``explain`` and
the lint. Everything costly (regexes, globs, label names) is prepared in ``__init__``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Protocol

from gateway.predictions import Label, join_label

from ._facts import Facts

__all__ = [
    "AllOf",
    "Always",
    "AnyOf",
    "EntityIs",
    "LabelDescendant",
    "LabelExact",
    "LabelPropertyIs",
    "Not",
    "Predicate",
    "SentimentIs",
    "Unclassified",
    "Verdict",
    "glob_regex",
]

Verdict = tuple[bool, str]


class Predicate(Protocol):
    text: str

    def __call__(self, facts: Facts) -> Verdict: ...


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A case-insensitive full-match regex for a shell glob."""
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE | re.DOTALL)


def _num(value: float) -> str:
    return f"{value:g}"


def _bounds(value: float, above: float | None, below: float | None) -> tuple[bool, str]:
    """Strict bounds check, and the comparison as text (``-0.6 < -0.5``)."""
    texts = []
    held = True
    if above is not None:
        ok = value > above
        held = held and ok
        texts.append(f"{_num(value)} {'>' if ok else '<='} {_num(above)}")
    if below is not None:
        ok = value < below
        held = held and ok
        texts.append(f"{_num(value)} {'<' if ok else '>='} {_num(below)}")
    return held, " and ".join(texts)


def _bounds_text(above: float | None, below: float | None) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {_num(above)}")
    if below is not None:
        parts.append(f"< {_num(below)}")
    return " and ".join(parts)


class Always:
    """A rule without ``when``."""

    __slots__ = ("text",)

    def __init__(self) -> None:
        self.text = "always"

    def __call__(self, facts: Facts) -> Verdict:
        return True, "no condition (always)"


class _LabelBase:
    __slots__ = ("maximum", "minimum", "name", "text")

    def __init__(self, name: str, minimum: float | None, maximum: float | None) -> None:
        self.name = name
        self.minimum = minimum
        self.maximum = maximum
        low = "threshold" if minimum is None else _num(minimum)
        self.text = f"label '{name}' probability >= {low}" + (
            f" and <= {_num(maximum)}" if maximum is not None else ""
        )

    def _check(self, label: Label, threshold: float) -> Verdict:
        low = self.minimum if self.minimum is not None else threshold
        p = label.probability
        seen = f"label '{label.full_name}' probability {_num(p)}"
        if p < low:
            return False, f"{seen} < {_num(low)}"
        if self.maximum is not None:
            if p > self.maximum:
                return False, f"{seen} > {_num(self.maximum)} (max)"
            return True, f"{seen} >= {_num(low)} and <= {_num(self.maximum)}"
        return True, f"{seen} >= {_num(low)}"


class LabelExact(_LabelBase):
    """``label: "A > B"``: that exact label, within the probability bounds."""

    __slots__ = ("parts",)

    def __init__(
        self, parts: tuple[str, ...], minimum: float | None, maximum: float | None
    ) -> None:
        super().__init__(join_label(parts), minimum, maximum)
        self.parts = parts

    def __call__(self, facts: Facts) -> Verdict:
        if not facts.classified:
            return False, f"label '{self.name}': {facts.unclassified_text()}"
        label = facts.labels.get(self.parts)
        if label is None:
            return False, f"label '{self.name}' not predicted"
        return self._check(label, facts.threshold)


class LabelDescendant(_LabelBase):
    """``label: "A > *"``: any label below A (not A itself); ``"*"``: any label."""

    __slots__ = ("prefix",)

    def __init__(
        self, prefix: tuple[str, ...], minimum: float | None, maximum: float | None
    ) -> None:
        super().__init__(join_label((*prefix, "*")), minimum, maximum)
        self.prefix = prefix

    def __call__(self, facts: Facts) -> Verdict:
        if not facts.classified:
            return False, f"label '{self.name}': {facts.unclassified_text()}"
        n = len(self.prefix)
        candidates = [
            lb for parts, lb in facts.labels.items() if len(parts) > n and parts[:n] == self.prefix
        ]
        if not candidates:
            return False, f"no label matching '{self.name}' predicted"
        # Most probable first (ties: by name) so that the why is deterministic and
        # names the strongest evidence.
        candidates.sort(key=lambda lb: (-lb.probability, lb.name))
        first_miss: Verdict | None = None
        for label in candidates:
            verdict = self._check(label, facts.threshold)
            if verdict[0]:
                return verdict
            first_miss = first_miss or verdict
        assert first_miss is not None
        return False, f"no label matching '{self.name}' in range: {first_miss[1]}"


class SentimentIs:
    """``sentiment: {below, above}``: see ``facts.document_sentiment``."""

    __slots__ = ("above", "below", "text")

    def __init__(self, below: float | None, above: float | None) -> None:
        self.below = below
        self.above = above
        self.text = f"sentiment {_bounds_text(above, below)}"

    def __call__(self, facts: Facts) -> Verdict:
        value = facts.sentiment
        if value is None:
            return False, f"sentiment: {facts.sentiment_source}"
        held, seen = _bounds(value, self.above, self.below)
        return held, f"sentiment {seen} ({facts.sentiment_source})"


class EntityIs:
    """``entity: {kind, value}``: an entity of that kind whose value the regex finds."""

    __slots__ = ("kind", "regex", "text")

    def __init__(self, kind: str | None, value: str | None) -> None:
        self.kind = kind.lower() if kind is not None else None
        self.regex = re.compile(value) if value is not None else None
        bits = []
        if kind is not None:
            bits.append(f"kind '{kind}'")
        if value is not None:
            bits.append(f"value ~ /{value}/")
        self.text = "entity " + " ".join(bits)

    def __call__(self, facts: Facts) -> Verdict:
        prediction = facts.ctx.prediction
        if prediction is None or not facts.classified:
            return False, f"entity: {facts.unclassified_text()}"
        for entity in prediction.entities:
            if self.kind is not None and entity.entity_kind.lower() != self.kind:
                continue
            if self.regex is not None and self.regex.search(entity.formatted_value) is None:
                continue
            return True, f"entity {entity.entity_kind} '{entity.formatted_value}'"
        return False, f"no {self.text}"


class LabelPropertyIs:
    """``label_property: {name, below, above}``."""

    __slots__ = ("above", "below", "name", "text")

    def __init__(self, name: str, below: float | None, above: float | None) -> None:
        self.name = name
        self.below = below
        self.above = above
        self.text = f"label_property '{name}' {_bounds_text(above, below)}"

    def __call__(self, facts: Facts) -> Verdict:
        prediction = facts.ctx.prediction
        if prediction is None or not facts.classified:
            return False, f"label_property: {facts.unclassified_text()}"
        wanted = self.name.lower()
        for prop in prediction.label_properties:
            if prop.property_name.lower() == wanted or (prop.property_id or "").lower() == wanted:
                held, seen = _bounds(prop.value, self.above, self.below)
                return held, f"label_property '{self.name}' {seen}"
        return False, f"label_property '{self.name}' not predicted"


class Unclassified:
    """``unclassified: true``: the message was not classified (unclassified or skipped)."""

    __slots__ = ("text", "wanted")

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.text = f"unclassified: {'true' if wanted else 'false'}"

    def __call__(self, facts: Facts) -> Verdict:
        state = facts.ctx.status.header_value
        return (not facts.classified) == self.wanted, f"status {state}"


class AllOf:
    """Every child holds (``all``, and the keys of one condition mapping)."""

    __slots__ = ("children", "text")

    def __init__(self, children: Sequence[Predicate]) -> None:
        self.children = tuple(children)
        self.text = "all(" + "; ".join(c.text for c in self.children) + ")"

    def __call__(self, facts: Facts) -> Verdict:
        whys = []
        for child in self.children:
            held, why = child(facts)
            if not held:
                return False, why
            whys.append(why)
        return True, " and ".join(whys)


class AnyOf:
    """At least one child holds; the why names the first that did."""

    __slots__ = ("children", "text")

    def __init__(self, children: Sequence[Predicate]) -> None:
        self.children = tuple(children)
        self.text = "any(" + "; ".join(c.text for c in self.children) + ")"

    def __call__(self, facts: Facts) -> Verdict:
        whys = []
        for child in self.children:
            held, why = child(facts)
            if held:
                return True, why
            whys.append(why)
        return False, "none of: " + "; ".join(whys)


class Not:
    """The child does not hold."""

    __slots__ = ("child", "text")

    def __init__(self, child: Predicate) -> None:
        self.child = child
        self.text = f"not({child.text})"

    def __call__(self, facts: Facts) -> Verdict:
        held, why = self.child(facts)
        return not held, f"not ({why})"
