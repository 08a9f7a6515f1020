"""The one control-character sanitizer: text that stays on one line wherever it goes.

Every C0 control, DEL, the C1 controls and the Unicode line and paragraph separators: a
mail reader, a log viewer or a terminal might take any of them for a line break or an
escape. Used for header values we write and read, SMTP reply texts, and attachment names.
"""

from __future__ import annotations

import re

__all__ = ["has_controls", "replace_controls"]

_WIDE = "\x7f-\x9f\u2028\u2029"
_PATTERNS = {
    (keep_tab, c0_only): re.compile(
        "["
        + ("\x00-\x08\x0a-\x1f" if keep_tab else "\x00-\x1f")
        + ("\x7f" if c0_only else _WIDE)
        + "]"
    )
    for keep_tab in (False, True)
    for c0_only in (False, True)
}


def has_controls(text: str, *, keep_tab: bool = False, c0_only: bool = False) -> bool:
    """Whether ``replace_controls`` would change ``text``."""
    return _PATTERNS[keep_tab, c0_only].search(text) is not None


def replace_controls(
    text: str, replacement: str = " ", *, keep_tab: bool = False, c0_only: bool = False
) -> str:
    """``text`` with each control character replaced (by a space unless told otherwise).
    ``keep_tab``: a horizontal tab is whitespace and stays. ``c0_only``: C0 and DEL only,
    for text read from a message for the API, whose documents (and their dedup hashes)
    must stay as they were."""
    if text.isascii() and text.isprintable():
        return text  # nothing to do, and the common case
    return _PATTERNS[keep_tab, c0_only].sub(replacement, text)
