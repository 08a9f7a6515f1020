"""Header surgery on raw messages, without ever re-serialising them.

Header lines are *prepended*, the rest of the message passes byte for byte
(so DKIM signatures stay valid), and ``prefix_subject`` is the only rewrite of an existing
header. Only the header block is read (up to the first empty line); the body is never
parsed or touched.

Values that come from the classifier API (label names) or from rule files are untrusted:
``safe_header_value`` turns any string into something that can follow ``Name: `` on the
wire: no CR, LF, NUL or other control characters, RFC 2047 encoded-words (UTF-8) when not
plain ASCII, folded at 78 columns where possible and never past 998 octets a line, and the
whole value capped at ``MAX_HEADER_BYTES``.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from gateway.controls import replace_controls
from gateway.redact import scrub

from ._mimetext import decode_header_value, one_line
from ._subject import apply_subject_prefix

__all__ = [
    "MAX_HEADER_BYTES",
    "header_block",
    "header_name_matcher",
    "prefix_subject",
    "prepend_headers",
    "remove_headers",
    "safe_header_value",
    "strip_headers",
    "valid_header_name",
]

MAX_HEADER_BYTES = 8192
"""Upper bound for one written header field (name, value and folds)."""

_FOLD_WIDTH = 78  # RFC 5322 §2.1.1: SHOULD be no more than 78 characters
_HARD_LIMIT = 998  # RFC 5322 §2.1.1: MUST be no more than 998 characters
# A plain ASCII token longer than this cannot be folded (folding only happens at
# existing whitespace), so such a value is written as encoded-words, which may be split.
_MAX_TOKEN = 900
_ELLIPSIS = " ..."
_WORD_OCTETS = 45  # octets per encoded-word: 60 base64 characters, 72 with =?utf-8?b?...?=

# RFC 5322 §3.6.8: ftext is printable US-ASCII except ":".
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]{1,76}$")
_SPACES = re.compile(r"\s+")
# Printable ASCII words separated by single spaces: a value ``_clean`` leaves as it is.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")


# Cached: the names written are a handful (ours and those of the rule files), checked
# for every field of every message.
@functools.lru_cache(maxsize=1024)
def valid_header_name(name: str) -> bool:
    """True for an RFC 5322 field name (printable ASCII, no colon, at most 76 characters)."""
    try:
        return bool(_FIELD_NAME.match(name.encode("ascii")))
    except UnicodeEncodeError:
        return False


def _clean(value: str) -> str:
    # Folding whitespace and any control character become one space; runs of
    # whitespace collapse, so the result can be re-folded at any space.
    return _SPACES.sub(" ", replace_controls(value)).strip()


def _fold_ascii(text: str, first_width: int) -> str:
    """Fold at existing spaces so that lines stay within 78 columns when possible."""
    if "  " in text or text[:1] == " " or text[-1:] == " ":
        return _fold_words(text, first_width)
    # Single-spaced text (what _clean makes): the same greedy fold, found with rfind
    # instead of a Python loop over every word (tests/unit/test_headers.py compares them).
    width = _FOLD_WIDTH - first_width
    lines: list[str] = []
    start = 0
    while len(text) - start > width:
        # The last space that keeps text[start:cut] within the width; none: the first
        # word is longer than a line and stands alone on it. max(): a name longer than
        # 78 columns leaves a negative width, and a negative end counts from the end.
        cut = text.rfind(" ", start + 1, start + max(width, 0) + 1)
        if cut < 0:
            cut = text.find(" ", start + 1)
            if cut < 0:
                break
        lines.append(text[start:cut])
        start = cut + 1
        width = _FOLD_WIDTH - 1  # continuation lines start with one space
    lines.append(text[start:])
    return "\r\n ".join(lines)


def _fold_words(text: str, first_width: int) -> str:
    """``_fold_ascii`` for any text, one word at a time."""
    lines: list[str] = []
    current = ""
    width = _FOLD_WIDTH - first_width
    for word in text.split(" "):
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
            width = _FOLD_WIDTH - 1  # continuation lines start with one space
    lines.append(current)
    return "\r\n ".join(lines)


def _encoded_words(text: str, first_width: int) -> str:
    """RFC 2047 ``B`` encoded-words (UTF-8), one per line, never splitting a character.

    A word carries at most 45 octets (60 base64 characters, 72 with the delimiters), so
    continuation lines stay within 78 columns; the first is shortened to fit after
    ``Name: `` when it can be."""
    words: list[str] = []
    first_budget = max(3, (_FOLD_WIDTH - first_width - 12) // 4 * 3)
    budget = min(first_budget, _WORD_OCTETS)
    chunk = bytearray()
    for char in text:
        encoded = char.encode("utf-8", "replace")  # a lone surrogate becomes "?"
        if chunk and len(chunk) + len(encoded) > budget:
            words.append(base64.b64encode(chunk).decode("ascii"))
            chunk.clear()
            budget = _WORD_OCTETS
        chunk += encoded
    if chunk or not words:
        words.append(base64.b64encode(chunk).decode("ascii"))
    return "\r\n ".join(f"=?utf-8?b?{w}?=" for w in words)


def _encode(text: str, name: str) -> str:
    needs_encoding = not text.isascii() or (
        len(text) > _MAX_TOKEN and any(len(w) > _MAX_TOKEN for w in text.split(" "))
    )
    if not needs_encoding:
        return _fold_ascii(text, len(name) + 2)
    return _encoded_words(text, len(name) + 2)


def _truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, at a list or word boundary."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - len(_ELLIPSIS), 0)]
    for boundary in (", ", " "):
        at = cut.rfind(boundary)
        if at > len(cut) // 2:
            cut = cut[:at]
            break
    return cut.rstrip(" ,") + _ELLIPSIS


def safe_header_value(value: str, *, name: str = "X-CM-Labels") -> str:
    """``value`` made safe to write after ``Name: ``.

    The result is ASCII; it contains line breaks only as ``CRLF`` + space folds, no line
    (counting ``name: `` on the first) exceeds 998 octets, and the whole field stays under
    ``MAX_HEADER_BYTES`` (truncated at a ``, `` or word boundary with `` ...``), and no
    registered secret (``redact``). Applying it twice gives a value that decodes to the
    same text.
    """
    # scrub: an API that echoes the request's credentials into a label name must not get
    # the token written into the mail.
    text = scrub(value)
    if _PLAIN.fullmatch(text) is None:
        text = _clean(text)
    elif len(name) + 2 + len(text) <= _FOLD_WIDTH:
        # Plain ASCII that fits on the first line (most values): the steps below would
        # return it unchanged (tests/unit/test_headers.py checks that they do).
        return text
    return _fit(text, name)


def _fit(text: str, name: str) -> str:
    """Cleaned ``text`` encoded, folded and cut to fit (``safe_header_value``)."""
    budget = len(text)
    while True:
        candidate = _truncate(text, budget)
        encoded = _encode(candidate, name)
        if len(name) + 2 + len(encoded) <= MAX_HEADER_BYTES or budget <= 16:
            break
        # Shrink proportionally to the overshoot (encoded-words can take ~2x the text).
        budget = int(budget * MAX_HEADER_BYTES / (len(name) + 2 + len(encoded)) * 0.95)
    assert len(name) + 2 + len(encoded) <= _HARD_LIMIT or all(
        len(line) <= _HARD_LIMIT for line in f"{name}: {encoded}".split("\r\n")
    )
    return encoded


def _lines(raw: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each header line, end including its line ending, stopping before
    the empty line that ends the header block (or at the end of the message)."""
    pos = 0
    size = len(raw)
    while pos < size:
        nl = raw.find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        if raw[pos:end] in (b"\r\n", b"\n"):
            return
        yield pos, end
        pos = end


def header_block(raw: bytes) -> bytes:
    """The header block of ``raw`` (without the empty line that ends it)."""
    last = 0
    for _start, end in _lines(raw):
        last = end
    return raw[:last]


def _fields(raw: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(lower-cased name, start, end) of each header field, continuation lines included.
    A line that is not a field (no colon) is reported with the name ``b""``."""
    name = b""
    start = end = -1
    for line_start, line_end in _lines(raw):
        if raw[line_start : line_start + 1] in (b" ", b"\t") and start >= 0:
            end = line_end  # a folded continuation of the current field
            continue
        if start >= 0:
            yield name, start, end
        colon = raw.find(b":", line_start, line_end)
        name = raw[line_start:colon].strip().lower() if colon > 0 else b""
        start, end = line_start, line_end
    if start >= 0:
        yield name, start, end


def _linesep(raw: bytes) -> bytes:
    nl = raw.find(b"\n")
    return b"\n" if nl >= 0 and (nl == 0 or raw[nl - 1 : nl] != b"\r") else b"\r\n"


def _field_bytes(name: str, value: str, linesep: bytes) -> bytes:
    if not valid_header_name(name):
        raise ValueError(f"invalid header field name {name!r}")
    folded = safe_header_value(value, name=name)
    return f"{name}: {folded}".encode("ascii").replace(b"\r\n", linesep) + linesep


def prepend_headers(raw: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """``raw`` with ``headers`` written on top, in order; every value goes through
    ``safe_header_value``. The original bytes follow unchanged. Raises ``ValueError`` for a
    field name that RFC 5322 does not allow."""
    if not headers:
        return raw
    linesep = _linesep(raw)
    return b"".join([*(_field_bytes(n, v, linesep) for n, v in headers), raw])


def header_name_matcher(prefix: str, names: Iterable[str] = ()) -> Callable[[str], bool]:
    """Does a field name (any case) start with ``prefix``, or is it one of ``names`` (a
    name ending in ``*``: a prefix)? The one reading of such lists, for the SMTP front's
    stripping and the milter front's deletions."""
    prefixes = [prefix.lower()]
    exact: set[str] = set()
    for name in names:
        folded = name.lower()
        if folded.endswith("*"):
            prefixes.append(folded[:-1])
        else:
            exact.add(folded)
    starts = tuple(prefixes)

    def matches(name: str) -> bool:
        folded = name.lower()
        return folded in exact or folded.startswith(starts)

    return matches


def strip_headers(raw: bytes, prefix: str = "X-CM-", names: Iterable[str] = ()) -> bytes:
    """``raw`` without the header fields ``header_name_matcher(prefix, names)`` matches,
    continuation lines included. Only the header block is looked at; everything else
    stays byte for byte."""
    matches = header_name_matcher(prefix, names)
    return _drop(raw, [(s, e) for n, s, e in _fields(raw) if matches(n.decode("latin-1"))])


def remove_headers(raw: bytes, names: Iterable[str]) -> bytes:
    """``raw`` without every field named one of ``names`` (case-insensitive),
    continuation lines included; everything else stays byte for byte."""
    wanted = {n.lower().encode("ascii") for n in names}
    return _drop(raw, [(s, e) for name, s, e in _fields(raw) if name in wanted])


def _drop(raw: bytes, drop: list[tuple[int, int]]) -> bytes:
    if not drop:
        return raw
    view = memoryview(raw)
    parts: list[memoryview] = []
    pos = 0
    for start, end in drop:
        parts.append(view[pos:start])
        pos = end
    parts.append(view[pos:])
    return b"".join(parts)


def prefix_subject(raw: bytes, prefix: str) -> bytes:
    """``raw`` with ``prefix`` in front of its Subject (decoded, prefixed, re-encoded when
    not ASCII); idempotent with ``rules.apply_subject_prefix`` semantics (a prefix already
    among the leading tags, after ``Re:`` and the like, is not added again). A message
    without a Subject gets one. Only that one field changes; the rest stays byte for byte."""
    subject = next(((s, e) for name, s, e in _fields(raw) if name == b"subject"), None)
    linesep = _linesep(raw)
    if subject is None:
        new_value = apply_subject_prefix("", prefix).strip()
        if not new_value:
            return raw
        return _field_bytes("Subject", new_value, linesep) + raw
    start, end = subject
    field = raw[start:end]
    # Decoded as the header reader decodes it (_mimeheaders.decoded_fields), so that the
    # subject a rule saw is the one that gets the prefix.
    raw_value = field[field.find(b":") + 1 :].decode("ascii", "surrogateescape")
    old_value = decode_header_value(one_line(raw_value)).strip()
    new_value = apply_subject_prefix(old_value, prefix)
    if new_value == old_value:
        return raw
    name = field[: field.find(b":")].decode("ascii", errors="replace").strip() or "Subject"
    if not valid_header_name(name):
        name = "Subject"
    view = memoryview(raw)  # one copy of a possibly large message, not two
    return b"".join((view[:start], _field_bytes(name, new_value, linesep), view[end:]))
