"""The top-level header block: read it, decode it, trim it, and render it for the API.

This is the one header reader of the gateway: the rules, the payload, ``explain`` and
``classify`` see header values from ``header_fields`` (or ``decoded_fields`` of the items
already read), whether the message is parsed whole or, past ``classify_max_size``, only
its header block. Reading only the header block (never the body) keeps this cheap and
unable to recurse, whatever the message holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.parser import BytesParser
from email.policy import compat32

from ._mimetext import decode_header_value, one_line

__all__ = [
    "block_header_items",
    "decoded_fields",
    "header_block_end",
    "header_fields",
    "header_items",
    "raw_headers",
    "simple_header_items",
    "stdlib_header_items",
    "trim_header_block",
]

# The first empty line, with the stdlib's idea of a line ending (CRLF, CR or LF);
# atomic groups so that "a\r\nb" is never read as CR + LF = two line endings.
_HEADER_END = re.compile(rb"(?>\r\n|\n|\r)(?>\r\n|\n|\r)")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n|$)")
# A header field's first line as the stdlib feedparser recognises it.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]*):")
# One line of a header block decoded as the stdlib decodes it (ASCII, surrogateescape):
# a field's first line (group 1: a non-empty name), or a continuation line (group 1
# None), or a line that is neither (no match). Line endings as in _LINE.
_TEXT_LINE = re.compile(r"(?:([\x21-\x39\x3b-\x7e]+):|[ \t])[^\r\n]*(?:\r\n|\r|\n|\Z)")

_DROPPED = frozenset({"content-type", "content-transfer-encoding"})
# Kept longest when the header block is over the limit: what identifies the message.
_ESSENTIAL = frozenset(
    {
        "subject", "from", "to", "cc", "date", "message-id", "reply-to", "sender",
        "in-reply-to", "references", "auto-submitted", "precedence", "list-id",
        "list-unsubscribe", "x-auto-response-suppress", "importance", "x-priority",
        "return-path", "mime-version",
    }
)  # fmt: skip
# Dropped first: trace and signature headers, long and of little use to a classifier.
_BULKY = frozenset(
    {
        "received", "x-received", "received-spf", "dkim-signature", "x-google-dkim-signature",
        "domainkey-signature", "authentication-results", "x-gm-message-state",
        "x-google-smtp-source", "x-original-authentication-results",
    }
)  # fmt: skip
_BULKY_PREFIXES = ("arc-", "x-ms-exchange-", "x-microsoft-", "x-forefront-", "x-mimecast-")


def header_block_end(raw: bytes) -> int:
    """Offset just past the empty line that ends the headers (``len(raw)`` if none)."""
    match = _HEADER_END.search(raw)
    return match.end() if match else len(raw)


def header_items(raw: bytes) -> list[tuple[str, str]]:
    """The top-level header fields as (name, raw value), folding kept, in message order."""
    return block_header_items(raw[: header_block_end(raw)])


def decoded_fields(items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs as read -> values unfolded, RFC 2047-decoded, raw 8-bit octets
    decoded as UTF-8 else windows-1252, control characters made spaces, trimmed."""
    return tuple((name, decode_header_value(one_line(value)).strip()) for name, value in items)


def header_fields(raw: bytes) -> tuple[tuple[str, str], ...]:
    """(name as written, decoded value) of each top-level header field, in order."""
    return decoded_fields(header_items(raw))


def block_header_items(block: bytes) -> list[tuple[str, str]]:
    """``header_items`` of a header block already cut at ``header_block_end``."""
    items = simple_header_items(block)
    if items is not None:
        return items
    return stdlib_header_items(block)


def simple_header_items(block: bytes) -> list[tuple[str, str]] | None:
    """``block_header_items`` without the stdlib parser, for the usual block: only
    "Name: value" lines and their continuations, ended by an empty line or the end.

    None for anything else (a leading continuation, a "From " line, an empty name, a
    line that is no header...): the stdlib's defect handling decides those. The
    feedparser costs ~10 x more for the common five-header block it would parse the same
    way (tests/unit/test_mimeheaders.py compares the two).
    """
    text = block.decode("ascii", "surrogateescape")
    items: list[tuple[str, str]] = []
    match_line = _TEXT_LINE.match
    position = 0
    end = len(text)
    name: str | None = None
    lines: list[str] = []
    while position < end:
        match = match_line(text, position)
        if match is None:
            if text[position] not in "\r\n":
                return None
            break  # the empty line that ends the block
        line = match.group()
        position = match.end()
        field = match.group(1)
        if field is None:
            if name is None:
                return None
            lines.append(line)
            continue
        if name is not None:
            items.append(_source_item(name, lines))
        name = field
        lines = [line[len(field) + 1 :].lstrip(" \t")]
    if name is not None:
        items.append(_source_item(name, lines))
    return items


def _source_item(name: str, lines: list[str]) -> tuple[str, str]:
    # compat32's header_source_parse: the value with its folding, last line ending cut.
    return name, "".join(lines).rstrip("\r\n")


def stdlib_header_items(block: bytes) -> list[tuple[str, str]]:
    """``block_header_items`` by the stdlib parser (any block, defects handled as it does)."""
    try:
        message = BytesParser(policy=compat32).parsebytes(block, headersonly=True)
    except Exception:
        return []
    items: list[tuple[str, str]] = []
    for name, value in message.raw_items():
        clean = one_line(str(name)).strip()
        if clean:
            items.append((clean, str(value)))
    return items


def trim_header_block(raw: bytes, keep: frozenset[str]) -> bytes:
    """``raw`` with only the top-level header fields named in ``keep`` (lower case).

    Everything from the first line that is not a header field on (the body, or junk
    that the parser would treat as the body) is kept byte for byte, so the MIME
    structure the parser sees is unchanged.
    """
    end = header_block_end(raw)
    out: list[bytes] = []
    keeping = True
    position = 0
    for match in _LINE.finditer(raw, 0, end):
        line = match.group()
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if keeping:
                out.append(line)
        else:
            field = _FIELD.match(line)
            if field is None:  # not a header: the parser's body starts here
                break
            keeping = field.group(1).decode("ascii").lower() in keep
            if keeping:
                out.append(line)
        position = match.end()
    return b"".join(out) + raw[position:]


def raw_headers(items: Iterable[tuple[str, str]], limit: int) -> str:
    """Header lines joined with CRLF: at most ``limit`` characters, no header cut.

    Content-Type and Content-Transfer-Encoding are left out (they describe the MIME
    structure, not the body the API receives). Over the limit, whole headers are
    dropped: trace/signature headers first, then others, addressing headers last.
    """
    texts: list[str] = []
    names: list[str] = []
    for name, value in items:
        name = one_line(name).strip()
        lowered = name.lower()
        if not name or lowered in _DROPPED:
            continue
        texts.append(f"{name}: {one_line(value).strip()}")
        names.append(lowered)
    budget = limit + 2  # every line costs its length plus CRLF, except the last one
    if sum(map(len, texts)) + 2 * len(texts) <= budget:
        # All of them fit (the usual case): nothing is dropped, message order stays.
        return "\r\n".join(texts)
    lines = [(_rank(lowered), index, texts[index]) for index, lowered in enumerate(names)]
    kept: list[tuple[int, str]] = []
    for _, index, line in sorted(lines):
        cost = len(line) + 2
        if cost <= budget:
            budget -= cost
            kept.append((index, line))
    return "\r\n".join(line for _, line in sorted(kept))


def _rank(lowered: str) -> int:
    if lowered in _ESSENTIAL:
        return 0
    if lowered in _BULKY or lowered.startswith(_BULKY_PREFIXES):
        return 2
    return 1
