"""The text the emulator reads, and the text its entity offsets refer to.

For ``predict-raw-emails`` a document is one message (``message_index`` 0) with two parts:

* ``subject``: the value of the first ``Subject`` header (name case-insensitive), unfolded
  (CR/LF + whitespace -> the whitespace) and RFC 2047-decoded; from ``headers.parsed`` the
  value is used as given, only decoded.
* ``body``: ``body.plain`` exactly as sent (no normalisation at all, so offsets index the
  string the client sent); when there is no ``plain``, the ``html`` with its tags removed,
  ``<br>``/``</p>``-like tags turned into newlines and entities unescaped.

``include_comments: true`` returns these very strings as the comment's ``subject.text`` and
``body.text``, so every ``char_start``/``char_end`` can be checked against the response.
Offsets are Python ``str`` indices (code points); ``utf16_byte_*`` are 2 x UTF-16 code units.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import decode_header, make_header
from typing import Any

__all__ = [
    "EmailText",
    "Utf16Index",
    "email_text",
    "header_value",
    "html_to_text",
]

_BLOCK = re.compile(r"<\s*(br|/p|/div|/li|/tr|/h[1-6])\b[^>]*>", re.IGNORECASE)
_DROP = re.compile(r"<\s*(script|style)\b.*?<\s*/\s*\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body: tags removed, line breaks kept, entities unescaped."""
    text = _COMMENT.sub("", markup)
    text = _DROP.sub("", text)
    text = _BLOCK.sub("\n", text)
    text = _TAG.sub("", text)
    return html.unescape(text)


def _decode(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def header_value(headers: Mapping[str, Any], name: str) -> str | None:
    """The decoded value of header ``name`` from a ``raw_email.headers`` object, or None."""
    wanted = name.lower()
    parsed = headers.get("parsed")
    if isinstance(parsed, dict):
        for key, value in parsed.items():
            if str(key).lower() == wanted and isinstance(value, str):
                return _decode(value)
        return None
    raw = headers.get("raw")
    if not isinstance(raw, str):
        return None
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for i, line in enumerate(lines):
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() != wanted or line[:1] in (" ", "\t"):
            continue
        # Unfold: continuation lines start with whitespace.
        for cont in lines[i + 1 :]:
            if cont[:1] not in (" ", "\t"):
                break
            value += cont
        return _decode(value.strip())
    return None


@dataclass(frozen=True, slots=True)
class EmailText:
    """What the model reads of one raw email."""

    subject: str
    body: str
    attachment_names: tuple[str, ...]
    message_id: str | None
    sender: str | None

    @property
    def searchable(self) -> str:
        """All of it, for keyword counting (parts separated so no keyword spans two)."""
        return "\n\n".join((self.subject, self.body, *self.attachment_names))


def email_text(raw_email: Mapping[str, Any]) -> EmailText:
    """Extract subject, body and attachment names from a (validated) ``raw_email``."""
    headers = raw_email.get("headers") or {}
    body = raw_email.get("body") or {}
    plain = body.get("plain")
    text = plain if isinstance(plain, str) else html_to_text(str(body.get("html", "")))
    names = tuple(
        str(a.get("name", "")) for a in raw_email.get("attachments") or () if isinstance(a, dict)
    )
    message_id = header_value(headers, "Message-ID")
    return EmailText(
        subject=header_value(headers, "Subject") or "",
        body=text,
        attachment_names=names,
        message_id=message_id.strip().strip("<>") if message_id else None,
        sender=header_value(headers, "From"),
    )


class Utf16Index:
    """Code point index -> UTF-16 byte offset (2 per code unit, 4 per non-BMP char).

    Precomputes where the astral characters are, so each lookup is a bisect."""

    def __init__(self, text: str):
        self._astral = [] if text.isascii() else [m.start() for m in _ASTRAL.finditer(text)]

    def byte_offset(self, char_index: int) -> int:
        return 2 * (char_index + bisect_left(self._astral, char_index))
