"""Raw message bytes -> one ``predict-raw-emails`` document.

``parse_message`` reads a message with mail-parser (tolerant, and guarded against deep
nesting) and our own iterative MIME walk (``_mimewalk``); ``build_document`` turns the
result into a document that is always within the API's limits. Neither raises on any
input, and neither keeps state between calls other than ``_mimeparser``'s thread-safe
cache of parsed From/To values, so large messages can be parsed in a worker thread.

Choices (see also ``_mimewalk``):

* ``headers.raw`` holds every header as written (encoded words kept, folding removed,
  raw 8-bit bytes decoded as UTF-8 else windows-1252), except Content-Type and
  Content-Transfer-Encoding. Past 65,536 characters whole headers are dropped, trace
  and signature headers (Received, DKIM, ARC, Authentication-Results, X-MS-Exchange-*...)
  first, then other headers, and the addressing headers (Subject, From, To, Cc, Date,
  Message-ID...) last. Kept headers stay in message order.
* ``body`` carries ``plain`` and/or ``html`` as found; ``plain: ""`` when neither.
* ``comment_id`` is the Message-ID without ``<>`` when it matches the API's pattern
  (ASCII only), else the SHA-256 hex of it; absent without a Message-ID.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import getaddresses
from types import MappingProxyType

from gateway.context import Attachment
from gateway.documents import (
    MAX_ATTACHMENT_FIELD,
    MAX_ATTACHMENTS,
    MAX_HTML,
    MAX_PLAIN,
    MAX_RAW_HEADERS,
    AttachmentMeta,
    RawEmailBody,
    RawEmailDocument,
    UserProperties,
)

from ._limits import cap_parts, too_many_containers
from ._mimeheaders import (
    block_header_items,
    decoded_fields,
    header_block_end,
    header_items,
    raw_headers,
    simple_header_items,
    stdlib_header_items,
)
from ._mimeparser import MimeResult, read_mime
from ._mimetext import (
    clean_text,
    has_surrogates,
    one_line,
    truncate_text,
)
from ._user_properties import checked_property

__all__ = ["ParsedMessage", "body_text", "build_document", "parse_headers", "parse_message"]

_NO_PROPERTIES: Mapping[str, str | float] = MappingProxyType({})

_COMMENT_ID = re.compile(r"[\w\x21-\x2e\x3a-\x40\x5b-\x60\x7b-\x7e]{1,1024}", re.ASCII)
_MAX_NAME_EXTENSION = 16


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the gateway knows of one message after parsing.

    ``headers`` are (name as written, RFC 2047-decoded unfolded value) in message order;
    ``message_id`` has no ``<>``; ``text_plain``/``text_html`` are None when the message
    has no such part; ``attachments`` lists every attachment (not capped); ``defects``
    names what was wrong with the message (stdlib and mail-parser defect classes, plus
    ``MailParserRecursionError``, ``CharsetFallbackDefect``...).
    """

    headers: tuple[tuple[str, str], ...]
    subject: str
    message_id: str | None
    from_addresses: tuple[str, ...]
    to_addresses: tuple[str, ...]
    text_plain: str | None
    text_html: str | None
    attachments: tuple[Attachment, ...]
    size: int
    defects: tuple[str, ...]
    # The header block parse_message read and its header_items, so that build_document
    # given the same bytes does not parse the header block a second time.
    header_block: bytes = field(default=b"", repr=False, compare=False)
    header_items: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)
    # MIME parts past MAX_MIME_PARTS, counted but not read (MimePartLimitDefect).
    parts_skipped: int = 0


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw message bytes; never raises (unparseable input gives empty fields)."""
    try:
        return _parse(bytes(raw))
    except Exception as exc:  # the contract is "never raises": report it as a defect
        try:
            size = len(raw)
        except Exception:
            size = 0
        return ParsedMessage((), "", None, (), (), None, None, (), size, (_error_name(exc),))


def build_document(
    parsed: ParsedMessage,
    raw: bytes,
    *,
    user_properties: Mapping[str, str | float] = _NO_PROPERTIES,
    mailbox: str | None = None,
) -> RawEmailDocument:
    """One ``RawEmailDocument`` within every API limit; never raises."""
    try:
        return _build(parsed, raw, user_properties, mailbox)
    except Exception:  # a bug here must not lose the message: send the smallest valid doc
        return {"raw_email": {"headers": {"raw": ""}, "body": {"plain": ""}, "attachments": []}}


# --- parsing -----------------------------------------------------------------------


def _parse(raw: bytes) -> ParsedMessage:
    defects: list[str] = []
    block = raw[: header_block_end(raw)]
    simple = simple_header_items(block)
    items = simple if simple is not None else stdlib_header_items(block)
    headers = decoded_fields(items)

    mime = MimeResult()
    parts_skipped = 0
    if too_many_containers(raw):
        # The stdlib parser's cost grows with the square of the nesting depth (and it
        # ends in a RecursionError): such a message keeps its headers, not its body.
        defects.append("MimeContainerLimitDefect")
    else:
        readable, parts_skipped = cap_parts(raw, len(block))
        if parts_skipped:
            defects.append("MimePartLimitDefect")
        mime = read_mime(readable, simple, len(block))
    walk = mime.walk
    defects.extend(mime.defects)
    defects.extend(walk.defects)
    from_addresses, to_addresses = mime.from_addresses, mime.to_addresses

    if from_addresses is None:
        from_addresses = _fallback_addresses(headers, "from")
    if to_addresses is None:
        to_addresses = _fallback_addresses(headers, "to")

    return ParsedMessage(
        headers=headers,
        subject=_first(headers, "subject") or "",
        message_id=_message_id(items),
        from_addresses=from_addresses,
        to_addresses=to_addresses,
        text_plain="\n\n".join(walk.plain) if walk.plain else None,
        text_html="\n\n".join(walk.html) if walk.html else None,
        attachments=tuple(walk.attachments),
        size=len(raw),
        defects=tuple(dict.fromkeys(defects)),
        header_block=block,
        header_items=tuple(items),
        parts_skipped=parts_skipped,
    )


def parse_headers(raw: bytes) -> ParsedMessage:
    """What the rules need of a message that is not classified (too large, or classified
    before us): its header block, read and decoded as ``parse_message`` reads it; From/To
    addresses from those values; no body, no attachments, no MIME parse of megabytes."""
    block = raw[: header_block_end(raw)]
    items = block_header_items(block)
    headers = decoded_fields(items)
    return ParsedMessage(
        headers=headers,
        subject=_first(headers, "subject") or "",
        message_id=_message_id(items),
        from_addresses=_fallback_addresses(headers, "from"),
        to_addresses=_fallback_addresses(headers, "to"),
        text_plain=None,
        text_html=None,
        attachments=(),
        size=len(raw),
        defects=(),
        header_block=block,
        header_items=tuple(items),
    )


def _fallback_addresses(headers: Iterable[tuple[str, str]], name: str) -> tuple[str, ...]:
    value = _first(headers, name)
    if not value:
        return ()
    try:
        pairs = getaddresses([value])
    except Exception:
        return ()
    return tuple(address for _, address in pairs if address)


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _message_id(raw_headers: list[tuple[str, str]]) -> str | None:
    value = _first(raw_headers, "message-id")
    if value is None:
        return None
    value = one_line(value).strip()
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start + 1)
        value = value[start + 1 : end] if end >= 0 else value[start + 1 :]
    value = value.strip()
    return value or None


def _error_name(exc: BaseException) -> str:
    return f"ParseError:{type(exc).__name__}"


# --- the document ------------------------------------------------------------------


def _build(
    parsed: ParsedMessage,
    raw: bytes,
    user_properties: Mapping[str, str | float],
    mailbox: str | None,
) -> RawEmailDocument:
    items = _header_items(parsed, raw)
    if not items:
        items = list(parsed.headers)
    body: RawEmailBody = {}
    if parsed.text_plain is not None:
        body["plain"] = body_text(parsed.text_plain, MAX_PLAIN)
    if parsed.text_html is not None:
        body["html"] = body_text(parsed.text_html, MAX_HTML)
    if not body:
        body["plain"] = ""
    document: RawEmailDocument = {
        "raw_email": {
            "headers": {"raw": raw_headers(items, MAX_RAW_HEADERS)},
            "body": body,
            "attachments": [_attachment(a) for a in parsed.attachments[:MAX_ATTACHMENTS]],
        },
        "user_properties": _user_properties(parsed, user_properties, mailbox),
    }
    comment_id = _comment_id(parsed.message_id)
    if comment_id is not None:
        document["comment_id"] = comment_id
    return document


def body_text(text: str, limit: int) -> str:
    """``truncate_text(clean_text(text), limit)``, cleaning only the head of a long text
    when that decides the result (a 9 MB body sends its first 65,536 characters).

    Without surrogates, ``clean_text`` (NULs out, CRLF and CR to LF) is a per-character
    rewrite that only shrinks, and the cleaned head of a text is a head of the cleaned
    text; truncate_text reads at most ``limit + 1`` characters of a longer text. So a
    cleaned head longer than ``limit`` gives the same result. With surrogates the
    cleaning is not local (the whole text is decoded again), and neither is this.
    """
    head = 2 * limit + 2  # CRLF -> LF at most halves it; only NULs can shrink it more
    if len(text) > head and not has_surrogates(text):
        cleaned = clean_text(text[:head])
        if len(cleaned) > limit:
            return truncate_text(cleaned, limit)
    return truncate_text(clean_text(text), limit)


def _header_items(parsed: ParsedMessage, raw: bytes) -> list[tuple[str, str]]:
    """``header_items(raw)``, taken from ``parsed`` when it read the same header block."""
    if not raw:
        return []
    raw = bytes(raw)
    block = parsed.header_block
    if block and raw.startswith(block) and header_block_end(raw) == len(block):
        return list(parsed.header_items)
    return header_items(raw)


def _attachment(attachment: Attachment) -> AttachmentMeta:
    size = attachment.size if isinstance(attachment.size, int) and attachment.size > 0 else 0
    return {
        "name": _limit_name(one_line(str(attachment.name)).strip()),
        "size": size,
        "content_type": truncate_text(one_line(str(attachment.content_type)), MAX_ATTACHMENT_FIELD),
    }


def _limit_name(name: str) -> str:
    """At most 256 characters, keeping a short extension such as ``.pdf``."""
    if len(name) <= MAX_ATTACHMENT_FIELD:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and stem and 0 < len(extension) <= _MAX_NAME_EXTENSION:
        room = MAX_ATTACHMENT_FIELD - len(extension) - 1
        return truncate_text(stem, room) + "." + extension
    return truncate_text(name, MAX_ATTACHMENT_FIELD)


def _user_properties(
    parsed: ParsedMessage, given: Mapping[str, str | float], mailbox: str | None
) -> UserProperties:
    properties: UserProperties = {}
    try:
        given_items = list(given.items())
    except Exception:
        given_items = []
    for key, value in given_items:
        checked = checked_property(key, value)
        if checked is not None:
            properties[checked[0]] = checked[1]
    # Computed properties never override the caller's, and never share a name with
    # one of them under the other type (the API rejects conflicting properties).
    taken = {key.split(":", 1)[1].strip().lower() for key in properties}
    computed: list[tuple[str, str | float]] = []
    if mailbox is not None:
        computed.append(("string:Mailbox", str(mailbox)))
    computed.append(("number:Attachment Count", len(parsed.attachments)))
    domain = _sender_domain(parsed.from_addresses)
    if domain:
        computed.append(("string:Sender Domain", domain))
    computed.append(("number:Size KB", round(max(parsed.size, 0) / 1024, 1)))
    if parsed.parts_skipped:
        computed.append(("number:MIME Parts Not Read", parsed.parts_skipped))
    for key, value in computed:
        checked = checked_property(key, value)
        if checked is not None and key.split(":", 1)[1].lower() not in taken:
            properties[checked[0]] = checked[1]
    return properties


def _sender_domain(addresses: tuple[str, ...]) -> str | None:
    for address in addresses:
        _, at, domain = address.rpartition("@")
        domain = domain.strip().strip(">").strip().lower()
        if at and domain:
            return truncate_text(domain, 255)
    return None


def _comment_id(message_id: str | None) -> str | None:
    if not message_id:
        return None
    if _COMMENT_ID.fullmatch(message_id):
        return message_id
    return hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
