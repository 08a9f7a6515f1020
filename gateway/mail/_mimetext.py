"""Turn the bytes and strings of a parsed message into clean Unicode text.

Mail lies about its charsets, carries raw 8-bit bytes in headers and sometimes NULs.
Everything here returns a ``str`` that encodes to UTF-8 (no lone surrogates), so the
JSON document built from it always serializes. Nothing here raises on message content.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterator
from email.header import decode_header

from gateway.controls import replace_controls

__all__ = [
    "CLEAN_PIECE",
    "clean_text",
    "decode_bytes",
    "decode_header_value",
    "fix_surrogates",
    "has_surrogates",
    "one_line",
    "truncate_text",
    "unfold",
]

# Labels that mail uses for "western single-byte"; such parts are very often UTF-8 in
# disguise, so UTF-8 is tried first when the bytes are not plain ASCII.
_WESTERN = frozenset({"ascii", "latin_1", "cp1252", "iso8859_15", "iso8859_1"})

# windows-1252 as WHATWG defines it: the five bytes Python's cp1252 leaves undefined map
# to the C1 controls, so it decodes any byte string (the last fallback).
_WINDOWS_1252 = "windows-1252-whatwg"
_CP1252_TABLE = {
    byte: bytes([byte]).decode("cp1252", "ignore") or chr(byte) for byte in range(0x80, 0xA0)
}

# Codecs to try, in order, for a declared label: what real mailers send under the narrow
# label. iso-8859-1 -> windows-1252 is what every browser does (WHATWG Encoding).
_PREFERRED: dict[str, tuple[str, ...]] = {
    "ascii": ("ascii", _WINDOWS_1252),
    "latin_1": (_WINDOWS_1252,),
    "iso8859_1": (_WINDOWS_1252,),
    "cp1252": (_WINDOWS_1252,),
    "shift_jis": ("cp932", "shift_jis", "shift_jis_2004"),
    "euc_jp": ("euc_jp", "euc_jis_2004", "cp932"),
    "iso2022_jp": ("iso2022_jp", "iso2022_jp_2", "iso2022_jp_ext", "iso2022_jp_3"),
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "euc_kr": ("cp949",),
    "big5": ("big5hkscs", "cp950"),
    "iso8859_8_i": ("iso8859_8",),
}

# Codecs that are not charsets a mail part can honestly declare: they would interpret
# escape sequences in the text instead of decoding it.
_REFUSED = frozenset(
    {"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined", "mbcs", "oem"}
)

_FOLD = re.compile(r"\r\n(?=[ \t])|\n(?=[ \t])|\r(?=[ \t])")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CHARSET_JUNK = re.compile(r"[\s\"'<>]+")

# Characters per C call on a long text. A parse of a big message runs in a worker thread,
# but a C call holds the GIL to its end: one str.replace over 9 MB of text took 107 ms,
# and the event loop waited that long. Between pieces the loop can take the GIL (every
# switch interval, 5 ms); 256 K characters are a few ms on a slow machine.
CLEAN_PIECE = 256 * 1024


def _codec_name(label: str | None) -> str | None:
    """Python's canonical codec name for a MIME charset label, or None if unusable."""
    if not label:
        return None
    cleaned = _CHARSET_JUNK.sub("", label).lower()
    if not cleaned or len(cleaned) > 64 or "\x00" in cleaned:
        return None
    if cleaned in ("iso-8859-8-i", "iso_8859-8-i"):
        return "iso8859_8_i"
    if cleaned in ("ks_c_5601-1987", "ks_c_5601", "ksc5601"):
        return "cp949"
    try:
        info = codecs.lookup(cleaned)
    except (LookupError, ValueError, TypeError):
        return None
    name = info.name.replace("-", "_")
    if name in _REFUSED or not getattr(info, "_is_text_encoding", True):
        return None
    return name


def _try(data: bytes, codec: str) -> str | None:
    if codec == _WINDOWS_1252:
        return data.decode("latin_1").translate(_CP1252_TABLE)
    try:
        text = data.decode(codec)
        if not text.isascii():  # O(1); ASCII has no surrogates (a 9 MB encode: 28 ms)
            text.encode("utf-8")  # some codecs can produce lone surrogates
    except Exception:  # LookupError, UnicodeError, and odd codec errors alike
        return None
    return text


def decode_bytes(data: bytes, charset: str | None) -> tuple[str, bool]:
    """Decode ``data`` declared as ``charset``; returns (text, used_fallback).

    Order: the declared charset (UTF-8 first when it claims a western single-byte set
    and the bytes are not ASCII) and its common supersets, then UTF-8, windows-1252 and
    latin-1, which cannot fail. ``used_fallback`` is True when the declared charset was
    unknown or did not decode the bytes.
    """
    codec = _codec_name(charset)
    preferred: list[str] = []
    if codec is not None:
        if codec in _WESTERN and not data.isascii():
            preferred.append("utf_8")
        preferred.extend(_PREFERRED.get(codec, (codec,)))
    else:
        preferred.append("utf_8")
    unknown_label = bool(charset and charset.strip()) and codec is None
    for candidate in preferred:
        text = _try(data, candidate)
        if text is not None:
            return text, unknown_label
    if "utf_8" not in preferred:
        text = _try(data, "utf_8")
        if text is not None:
            return text, True
    return data.decode("latin_1").translate(_CP1252_TABLE), True


def has_surrogates(text: str, piece: int = CLEAN_PIECE) -> bool:
    """Whether ``text`` holds a surrogate code point (a long text is searched in pieces
    of ``piece`` characters, without copies)."""
    # isascii() is O(1) on str (CPython keeps the flag), and an ASCII string has no
    # surrogates: most headers and bodies skip the regex scan.
    if text.isascii():
        return False
    return any(
        _SURROGATE.search(text, start, start + piece) for start in range(0, len(text), piece)
    )


def fix_surrogates(text: str) -> str:
    """Undo ``surrogateescape`` (raw 8-bit bytes kept by the stdlib parser).

    The escaped bytes are decoded as UTF-8, else windows-1252, else latin-1; any other
    lone surrogate becomes U+FFFD.
    """
    if not has_surrogates(text):
        return text
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    decoded, _ = decode_bytes(data, None)
    return _SURROGATE.sub("\ufffd", decoded)


def clean_text(text: str, *, piece: int = CLEAN_PIECE) -> str:
    """A body as sent to the API: no NULs, no lone surrogates, LF line endings. A long
    text is worked on ``piece`` characters at a time (see ``CLEAN_PIECE``)."""
    text = fix_surrogates(text)
    if _contains(text, "\x00", piece):
        text = "".join([p.replace("\x00", "") for p in _pieces(text, piece, "")])
    if _contains(text, "\r", piece):
        # Two C replaces instead of a regex substitution per line ending (~10 x faster on
        # a CRLF body). CRLF pairs first, then the CRs left are lone ones: the same
        # endings the regex \r\n|\r|\n finds (tests/unit/test_mimetext.py). No piece
        # ends between the CR and the LF of a pair.
        parts = _pieces(text, piece, "\r\n")
        text = "".join([p.replace("\r\n", "\n").replace("\r", "\n") for p in parts])
    return text


def _contains(text: str, char: str, piece: int) -> bool:
    # str.find with bounds copies nothing; `in` would scan the whole text in one call.
    return any(text.find(char, start, start + piece) >= 0 for start in range(0, len(text), piece))


def _pieces(text: str, piece: int, pair: str) -> Iterator[str]:
    """``text`` cut into pieces of about ``piece`` characters (the whole text when it is
    shorter), never between the two characters of ``pair`` (if one is given). One at a
    time: a list of them would hold a second copy of a big text."""
    if len(text) <= piece:
        yield text
        return
    start = 0
    while start < len(text):
        end = start + piece
        if pair and text[end - 1 : end + 1] == pair:
            end += 1
        yield text[start:end]
        start = end


def unfold(value: str) -> str:
    """RFC 5322 unfolding: drop the line breaks that precede whitespace."""
    return _FOLD.sub("", value)


def one_line(value: str) -> str:
    """Unfold, then turn any other control character (stray CR/LF, NUL...) into a space."""
    # Printable ASCII has no line break, surrogate or control character: nothing to do.
    # (A tab is not printable, so it takes the full path, which keeps it.)
    if value.isascii() and value.isprintable():
        return value
    return replace_controls(fix_surrogates(unfold(value)), keep_tab=True, c0_only=True)


def decode_header_value(value: str) -> str:
    """RFC 2047-decode an (already unfolded) header value, tolerating bad charsets."""
    value = fix_surrogates(value)
    if "=?" not in value:
        return value
    try:
        pieces = decode_header(value)
    except Exception:  # HeaderParseError and friends: keep the text as written
        return value
    out: list[str] = []
    for piece, charset in pieces:
        if isinstance(piece, str):
            out.append(piece)
        elif charset is None:
            # decode_header re-encodes the unencoded runs with raw-unicode-escape
            out.append(_try(piece, "raw_unicode_escape") or piece.decode("latin_1"))
        else:
            out.append(decode_bytes(piece, charset)[0])
    return fix_surrogates("".join(out))


def truncate_text(text: str, limit: int) -> str:
    """At most ``limit`` code points, never splitting a base character from its marks."""
    if len(text) <= limit:
        return text
    cut = limit
    # Step back over combining marks, joiners and variation selectors so the last
    # visible character keeps its accents (bounded: a run of marks is short).
    floor = max(0, limit - 32)
    while cut > floor and _attaches_to_previous(text[cut]):
        cut -= 1
    if cut == floor and floor > 0:
        cut = limit
    return text[:cut]


def _attaches_to_previous(char: str) -> bool:
    if char in "\u200d\u200c" or "\ufe00" <= char <= "\ufe0f":
        return True
    return unicodedata.category(char) in ("Mn", "Me", "Mc")
