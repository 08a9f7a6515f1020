"""mail-parser, asked only for what the gateway reads of it: defects and From/To.

``_payload`` takes three things from mail-parser (pinned, see pyproject.toml): its defect
categories, the first From and To addresses, and the stdlib tree that ``_mimewalk``
walks. mail-parser computes much more for every message, so this module calls it so
that the answers stay the same while the unused work is skipped:

* It gets only the top-level headers it needs (``trim_header_block``): a message with
  thousands of Received lines costs no more than one without.
* The address headers are parsed here, with mail-parser's own ``get_addresses`` and in
  the order its ``_reset`` uses, and the results are remembered per header value: a
  gateway sees the same From and To values again and again. The headers are then
  removed from the tree before mail-parser reads it, so it does not parse them again.
* ``_LeanMailParser`` skips the ``mail``/``mail_partial`` dictionaries mail-parser builds
  twice per message for its own JSON output, keeping the one step of them that can
  raise (decoding the remaining header values), so a message that made mail-parser
  fail still does.

``tests/unit/test_payload_golden.py`` pins the resulting documents and defects.
"""

from __future__ import annotations

import email
import functools
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import mailparser
from mailparser.const import ADDRESSES_HEADERS, COMPUTED_PARTS
from mailparser.core import _RESERVED_MAIL_KEYS
from mailparser.utils import decode_headers, get_addresses

from ._mimeheaders import trim_header_block
from ._mimetext import has_surrogates, one_line
from ._mimewalk import WalkResult, walk_message

__all__ = ["MimeResult", "read_mime"]

_MAILPARSER_HEADERS = frozenset(
    {
        "from",
        "to",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "mime-version",
    }
)
# mail-parser's _reset walks ADDRESSES_HEADERS in sorted order; the first failure wins.
_ADDRESS_ORDER = tuple(sorted(ADDRESSES_HEADERS))
# Header values longer than this are parsed every time: the cache stays small (at most
# _CACHE_ENTRIES * _MAX_CACHED_VALUE characters) whatever senders write.
_MAX_CACHED_VALUE = 512
_CACHE_ENTRIES = 2048

# Names _make_mail does not decode: address lists, computed parts, its own reserved keys.
_SKIPPED_BY_MAKE_MAIL = frozenset(ADDRESSES_HEADERS | COMPUTED_PARTS | _RESERVED_MAIL_KEYS)

_Pairs = tuple[tuple[str, str], ...]

# What a text part may carry for _text_part_categories, and the charsets it decodes
# itself (standard codecs: decoding raises UnicodeDecodeError or nothing).
_TEXT_PART_HEADERS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})
_PLAIN_CHARSETS = frozenset({"utf-8", "us-ascii", "iso-8859-1", "iso-8859-15", "windows-1252"})


@dataclass(slots=True)
class MimeResult:
    """What ``read_mime`` found: the walk, the addresses (None: unknown) and defects."""

    walk: WalkResult = field(default_factory=WalkResult)
    from_addresses: tuple[str, ...] | None = None
    to_addresses: tuple[str, ...] | None = None
    defects: list[str] = field(default_factory=list)


class _LeanMailParser(mailparser.MailParser):  # type: ignore[misc]  # untyped package
    """mail-parser without the ``mail`` dictionaries nobody here reads."""

    def _make_mail(self, complete: bool = True) -> dict[str, Any]:
        # mail-parser's _make_mail reads every header through decode_headers, which
        # raises for some values (ValueError for a NUL in an encoded word's charset);
        # the rest (address lists, computed parts) cannot raise. Only the complete call
        # (the first) can fail first, so the partial one is skipped outright.
        if complete:
            for name, values in self._header_index.items():
                if name not in _SKIPPED_BY_MAKE_MAIL:
                    decode_headers(values)
        return {}


def read_mime(
    raw: bytes, simple_headers: list[tuple[str, str]] | None = None, body_start: int = 0
) -> MimeResult:
    """mail-parser's parse (addresses, defects) and our walk of its MIME tree.

    ``simple_headers``: what ``simple_header_items`` read from ``raw[:body_start]``, the
    header block, if it could; a message that is neither multipart nor message/* then
    gets its tree without the stdlib parser (``_single_part_tree``).
    """
    result = MimeResult()
    try:
        message = None
        if simple_headers is not None:
            message = _single_part_tree(raw, simple_headers, body_start)
        single = message is not None
        if message is None:
            message = email.message_from_bytes(trim_header_block(raw, _MAILPARSER_HEADERS))
        addresses, address_defect = _address_headers(message)
        for name in ADDRESSES_HEADERS:
            del message[name]
        categories = _text_part_categories(message) if single else None
        if categories is None:
            mail = _LeanMailParser(message)
            categories = {str(name) for name in mail.defects_categories}
    except RecursionError:  # what mail-parser raises as MailParserRecursionError
        result.defects.append("MailParserRecursionError")
        return result
    except Exception as exc:
        # mail-parser can fail after the stdlib parse worked (an empty boundary trips its
        # epilogue search): walk the stdlib tree ourselves, or a sender could hide the
        # text from the classifier by breaking mail-parser.
        result.defects.append(f"MailParserError:{type(exc).__name__}")
        try:
            result.walk = walk_message(email.message_from_bytes(raw))
        except Exception as inner:  # RecursionError included: keep headers, lose the body
            result.defects.append(_error_name(inner))
        return result
    if address_defect:
        categories.add("AddressHeaderDefect")
    result.defects.extend(sorted(categories))
    result.from_addresses = _addresses(addresses.get("from", ()))
    result.to_addresses = _addresses(addresses.get("to", ()))
    if isinstance(message, Message):
        try:
            result.walk = walk_message(message)
        except Exception as exc:  # RecursionError included: keep headers, lose the body
            result.defects.append(_error_name(exc))
    return result


def _single_part_tree(
    raw: bytes, headers: list[tuple[str, str]], body_start: int
) -> Message | None:
    """The tree ``message_from_bytes(trim_header_block(raw, ...))`` gives, built directly
    when that is one part: the kept headers and the rest of ``raw`` as its payload.

    The feedparser reads a single-part body line by line only to join the lines again
    (~half of its time on a 4 KB message), and a simple header block (see
    ``simple_header_items``) gives it nothing to report as a defect. None for a
    multipart or message/* top level: the parser builds those.
    ``tests/unit/test_mimeparser.py`` compares the two trees.
    """
    if not headers:
        # An empty first line ends the headers for the parser but not for
        # header_block_end (it wants two line endings in a row): body_start is not the
        # parser's there.
        return None
    block = raw[:body_start]
    if block.count(b"\r") != block.count(b"\r\n"):
        # A bare CR: trimming a header out can join it with the LF of the next line into
        # one CRLF, and the parser then sees another structure than raw has.
        return None
    message = Message()
    for name, value in headers:
        if name.lower() in _MAILPARSER_HEADERS:
            message.set_raw(name, value)
    if message.get_content_maintype() in ("multipart", "message"):
        return None
    # Decoded from a view: a slice would copy a big body once more, a C call that holds
    # the GIL (and faults in fresh pages) while the event loop waits.
    message.set_payload(str(memoryview(raw)[body_start:], "ascii", "surrogateescape"))
    return message


def _text_part_categories(message: Message) -> set[str] | None:
    """mail-parser's defect categories for a ``_single_part_tree`` (address headers
    removed) that is one text/plain or text/html part with plain ASCII headers; None
    when it is anything else, and mail-parser must be asked.

    For such a part mail-parser finds no header or structure defect (the tree has none,
    and its Date/Received are trimmed away); what is left is its body decode, done here
    as it does it: ``get_payload(decode=True)`` once (a base64 body's padding defects
    land on the part then, where ``walk_message`` reads them), and
    ``CharsetDecodeDefect`` when the declared charset cannot decode the bytes. That
    decode is ~a third of parse_message on a 4 KB message.
    ``tests/unit/test_mimeparser.py`` compares this with mail-parser itself.
    """
    for name, value in message.raw_items():
        if not (isinstance(value, str) and value.isascii()):
            return None
        if name.lower() not in _TEXT_PART_HEADERS:
            return None
    if message.get_content_type() not in ("text/plain", "text/html"):
        return None
    if message.get_filename() is not None:  # named: mail-parser's attachment branch
        return None
    charset = message.get_content_charset("utf-8")
    if charset not in _PLAIN_CHARSETS:
        return None  # odd codecs may raise what mail-parser does not catch
    try:
        for name in ("content-type", "content-transfer-encoding", "mime-version"):
            values = message.get_all(name)
            if values:
                decode_headers(values)  # _LeanMailParser's one step that can raise
    except Exception:
        return None
    payload = message.get_payload(decode=True)
    encoding = str(message.get("content-transfer-encoding", "")).strip().lower()
    if encoding in ("", "7bit", "8bit"):
        # The payload as stored (get_payload() would decode raw 8-bit bytes lossily).
        text = getattr(message, "_payload", None)
        if isinstance(text, str) and not has_surrogates(text):
            return set()
    if not isinstance(payload, bytes) or not payload:
        return set()
    try:
        payload.decode(charset)
    except UnicodeError:
        return {"CharsetDecodeDefect"}
    return set()


def _address_headers(message: Message) -> tuple[dict[str, _Pairs], bool]:
    """mail-parser's address step: the first occurrence of each address header, and
    whether any occurrence needed recovery (its AddressHeaderDefect)."""
    index: dict[str, list[Any]] = {}
    for name, value in message.items():
        lowered = name.lower()
        if lowered in ADDRESSES_HEADERS:
            index.setdefault(lowered, []).append(value)
    first: dict[str, _Pairs] = {}
    defect = False
    for header in _ADDRESS_ORDER:
        for occurrence, value in enumerate(index.get(header, ())):
            if isinstance(value, str) and len(value) <= _MAX_CACHED_VALUE:
                pairs, recovered = _cached_addresses(value)
            else:  # an email.header.Header (8-bit bytes) or a long value
                pairs, recovered = _parse_addresses(value)
            defect = defect or recovered
            if occurrence == 0:
                first[header] = pairs
    return first, defect


def _parse_addresses(value: object) -> tuple[_Pairs, bool]:
    diagnostics: list[object] = []
    pairs = get_addresses(value, defects=diagnostics, decode_names=True)
    return tuple(pairs), bool(diagnostics)


# A pure function of the value; lru_cache is thread-safe (parse runs in worker threads
# for large messages), and exceptions are not cached.
_cached_addresses = functools.lru_cache(maxsize=_CACHE_ENTRIES)(_parse_addresses)


def _addresses(parsed: _Pairs) -> tuple[str, ...] | None:
    """The addresses of mail-parser's ``from_``/``to`` attribute, cleaned."""
    try:
        # What MailParser._header_value returns for an address header.
        pairs = [("" if name == address else name, address) for name, address in parsed if address]
    except Exception:  # not 2-tuples: mail-parser's attribute would have raised
        return None
    out: list[str] = []
    for pair in pairs:
        if isinstance(pair[1], str):
            address = one_line(pair[1]).strip()
            if address:
                out.append(address)
    return tuple(out)


def _error_name(exc: BaseException) -> str:
    return f"ParseError:{type(exc).__name__}"
