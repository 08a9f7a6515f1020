"""Regex entities with the full ``PredictedEntity`` shape (``cm-api.md`` §3.1).

Kinds: order-number, invoice-number, iban (mod-97 checked), credit-card (13-19 digits,
Luhn-valid), email-address, money. Where two matches overlap, the kind earlier in
``_ORDER`` wins (an IBAN's digits are not also a card number).
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._text import Utf16Index

__all__ = ["FoundEntity", "find_entities", "luhn_ok"]


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _iban_ok(compact: str) -> bool:
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _order(m: re.Match[str]) -> str | None:
    return m.group(0).upper()


def _iban(m: re.Match[str]) -> str | None:
    compact = re.sub(r"\s", "", m.group(0)).upper()
    return compact if 15 <= len(compact) <= 34 and _iban_ok(compact) else None


def _card(m: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", m.group(0))
    return digits if 13 <= len(digits) <= 19 and luhn_ok(digits) else None


def _email(m: re.Match[str]) -> str | None:
    return m.group(0).lower()


_CURRENCY = {"€": "EUR", "$": "USD", "£": "GBP"}


def _money(m: re.Match[str]) -> str | None:
    symbol, amount_a, amount_b, code = m.group("sym", "a1", "a2", "code")
    currency = _CURRENCY.get(symbol or "", code or "")
    amount = (amount_a or amount_b or "").replace(",", "")
    return f"{float(amount):.2f} {currency.upper()}"


_Normalise = Callable[[re.Match[str]], str | None]
_ORDER: tuple[tuple[str, re.Pattern[str], _Normalise], ...] = (
    (
        "email-address",
        re.compile(
            r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
        ),
        _email,
    ),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), _iban),
    ("invoice-number", re.compile(r"\bINV-\d{4,10}\b", re.IGNORECASE), _order),
    ("order-number", re.compile(r"\bORD-\d{6}\b", re.IGNORECASE), _order),
    ("credit-card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card),
    (
        "money",
        re.compile(
            r"(?P<sym>[€$£])\s?(?P<a1>\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d+(?:\.\d{1,2})?)"
            r"|(?<![\w.,])(?P<a2>\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d+(?:\.\d{1,2})?)\s?"
            r"(?P<code>EUR|USD|GBP|CHF)\b",
        ),
        _money,
    ),
)


@dataclass(frozen=True, slots=True)
class FoundEntity:
    kind: str
    formatted_value: str
    content_part: str
    message_index: int
    char_start: int
    char_end: int
    utf16_byte_start: int
    utf16_byte_end: int

    def span(self) -> dict[str, Any]:
        return {
            "content_part": self.content_part,
            "message_index": self.message_index,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "utf16_byte_start": self.utf16_byte_start,
            "utf16_byte_end": self.utf16_byte_end,
        }

    def to_json(self) -> dict[str, Any]:
        """The API's ``PredictedEntity``; ``id`` is a stable hash of what was found where."""
        key = f"{self.kind}|{self.message_index}|{self.content_part}|{self.char_start}|"
        key += self.formatted_value
        span = self.span()
        return {
            "id": hashlib.sha256(key.encode()).hexdigest()[:16],
            "name": self.kind,
            "kind": self.kind,
            "formatted_value": self.formatted_value,
            "probability": None,
            "span": span,
            "spans": [dict(span)],
            "capture_ids": [],
        }


_DIGITS = "0123456789"


def _may_match(kind: str, text: str) -> bool:
    """False only when ``kind``'s pattern cannot match ``text`` (plain substring counts,
    far cheaper than a regex scan: this keeps the emulator's CPU per document small
    next to the gateway it serves on the same machine)."""
    if kind == "email-address":
        return "@" in text
    if kind in ("invoice-number", "order-number"):
        # IGNORECASE may fold non-ASCII letters into "inv"/"ord": only ASCII text is ruled out.
        return not text.isascii() or ("inv-" if kind[0] == "i" else "ord-") in text.lower()
    if kind == "money":
        return any(mark in text for mark in ("€", "$", "£", "EUR", "USD", "GBP", "CHF"))
    if kind == "credit-card":  # \d also matches non-ASCII digits
        return not text.isascii() or sum(map(text.count, _DIGITS)) >= 13
    return True


def find_entities(text: str, content_part: str, message_index: int = 0) -> list[FoundEntity]:
    """Every entity in ``text``, in text order, with code point and UTF-16 offsets."""
    taken: list[tuple[int, int]] = []  # sorted, non-overlapping spans already claimed
    found: list[FoundEntity] = []
    index: Utf16Index | None = None
    for kind, pattern, normalise in _ORDER:
        if not _may_match(kind, text):
            continue
        for m in pattern.finditer(text):
            start, end = m.span()
            at = bisect_left(taken, (start, end))
            if (at > 0 and taken[at - 1][1] > start) or (at < len(taken) and taken[at][0] < end):
                continue
            value = normalise(m)
            if value is None:
                continue
            index = index or Utf16Index(text)
            insort(taken, (start, end))
            found.append(
                FoundEntity(
                    kind,
                    value,
                    content_part,
                    message_index,
                    start,
                    end,
                    index.byte_offset(start),
                    index.byte_offset(end),
                )
            )
    found.sort(key=lambda e: (e.char_start, e.kind))
    return found
