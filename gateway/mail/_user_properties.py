"""One user property of a document, checked: the API takes ``string:Name`` keys with text
values and ``number:Name`` keys with finite numbers, and refuses a request with any other.
A value is converted where that is unambiguous ("3.5" for a number), else dropped."""

from __future__ import annotations

import functools
import math

from ._mimetext import fix_surrogates, one_line, truncate_text

__all__ = ["MAX_PROPERTY_NAME", "MAX_PROPERTY_VALUE", "checked_property"]

MAX_PROPERTY_NAME = 1024
MAX_PROPERTY_VALUE = 1024


def checked_property(key: object, value: object) -> tuple[str, str | float | int] | None:
    """A valid (key, value) pair, converted where that is unambiguous, else None."""
    if not isinstance(key, str):
        return None
    checked = _property_key(key)
    if checked is None:
        return None
    kind, key = checked
    if kind == "number":
        number: float
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return (key, value) if abs(value) < 2**53 else None
        if isinstance(value, float):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                return None
        else:
            return None
        return (key, number) if math.isfinite(number) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        value = str(value)
    if not isinstance(value, str):
        return None
    text = truncate_text(fix_surrogates(value).replace("\x00", "").strip(), MAX_PROPERTY_VALUE)
    return (key, text) if text.strip() else None


@functools.lru_cache(maxsize=256)
def _property_key(key: str) -> tuple[str, str] | None:
    """(kind, the key as sent) for a valid ``kind:name`` key, else None. Cached: the
    keys are the configured ones and the four computed ones, checked for every message."""
    kind, colon, name = one_line(key).partition(":")
    name = name.strip()
    if not colon or kind not in ("string", "number") or not name:
        return None
    return kind, f"{kind}:{truncate_text(name, MAX_PROPERTY_NAME)}"
