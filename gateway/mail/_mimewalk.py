"""Walk a parsed MIME tree: which parts are the body, which are attachments.

The walk is iterative (an explicit stack), so a tree that the parser could build never
makes it recurse. Rules, in message order:

* ``text/plain`` and ``text/html`` leaves with no filename and a disposition other than
  ``attachment`` are the body; several of the same kind are joined with a blank line.
* ``message/rfc822`` (and ``message/global``) parts are attachments as a whole, named
  after their Subject (``<subject>.eml``) or ``message.eml``; their text is not part of
  the body. Other ``message/*`` parts (DSN ``delivery-status``...) are attachments too.
* Every other leaf is an attachment: its size is the decoded size in bytes.
* A multipart with ``Content-Disposition: attachment`` is one attachment; one that the
  parser could not split (no boundary) is read as a text/plain body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from email.utils import collapse_rfc2231_value
from io import BytesIO

from gateway.context import Attachment
from gateway.controls import replace_controls

from ._mimetext import (
    clean_text,
    decode_bytes,
    decode_header_value,
    fix_surrogates,
    one_line,
    unfold,
)

__all__ = ["WalkResult", "walk_message"]

# Names for attachments sent without a filename, by content type.
_EXTENSIONS = {
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/json": ".json",
    "application/xml": ".xml",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/octet-stream": ".bin",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "text/calendar": ".ics",
    "text/csv": ".csv",
    "text/plain": ".txt",
    "text/html": ".html",
    "text/rtf": ".rtf",
    "application/rtf": ".rtf",
    "text/enriched": ".txt",
    "text/rfc822-headers": ".txt",
    "message/rfc822": ".eml",
    "message/global": ".eml",
}
_BODY_TYPES = ("text/plain", "text/html")
_MIME_HEADERS = frozenset({"content-type", "content-disposition"})
_EML_TYPES = ("message/rfc822", "message/global")
_SERIALIZE = compat32.clone(linesep="\r\n")
_MAX_SUBJECT_NAME = 200


@dataclass(slots=True)
class WalkResult:
    """Bodies, attachments and MIME defects found by ``walk_message``."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)


def walk_message(root: Message) -> WalkResult:
    """Classify every part of ``root`` (iteratively, in message order)."""
    result = WalkResult()
    stack: list[Message] = [root]
    while stack:
        part = stack.pop()
        _note_defects(part, result)
        view = _mime_view(part)
        ctype = _content_type(view)
        disposition = _disposition(view)
        if ctype.startswith("message/") and part.is_multipart():
            result.attachments.append(_message_attachment(part, view, ctype))
            continue
        if part.is_multipart():
            if disposition == "attachment" and part is not root:
                name = _filename(view) or "attachment"
                result.attachments.append(Attachment(name, ctype, _estimate_size(part)))
                continue
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(reversed([child for child in children if isinstance(child, Message)]))
            continue
        _leaf(part, view, ctype, disposition, result)
    return result


def _mime_view(part: Message) -> Message:
    """The part's MIME headers with raw 8-bit bytes decoded, for parameter parsing.

    The stdlib would otherwise hand ``get_param`` a ``Header`` whose 8-bit bytes have
    become replacement characters (a UTF-8 ``filename="Ärger.txt"`` sent raw).
    """
    view = Message()
    view.set_default_type(part.get_default_type())
    for name, value in part.raw_items():
        if name.lower() in _MIME_HEADERS:
            view[name] = fix_surrogates(unfold(str(value)))
    return view


def _leaf(part: Message, view: Message, ctype: str, disposition: str, result: WalkResult) -> None:
    filename = _filename(view)
    data = _payload_bytes(part, result)
    if ctype.startswith("multipart/"):
        # A multipart the parser could not split (no boundary): its text, boundary
        # lines and all, is the best body there is.
        ctype = "text/plain"
    if ctype in _BODY_TYPES and disposition != "attachment" and not filename:
        text, fallback = decode_bytes(data, _charset(view))
        if fallback:
            result.defects.append("CharsetFallbackDefect")
        (result.html if ctype == "text/html" else result.plain).append(clean_text(text))
        return
    name = filename or "attachment" + _EXTENSIONS.get(ctype, "")
    result.attachments.append(Attachment(name, ctype, len(data)))


def _payload_bytes(part: Message, result: WalkResult) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a broken uuencode or an odd payload type: count it as empty
        result.defects.append("PayloadDecodeDefect")
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):  # pragma: no cover  # compat32 returns bytes for leaves
        return data.encode("utf-8", "surrogateescape")
    return b""


def _note_defects(part: Message, result: WalkResult) -> None:
    for defect in getattr(part, "defects", ()):
        result.defects.append(type(defect).__name__)


def _content_type(part: Message) -> str:
    try:
        ctype = part.get_content_type()
    except Exception:
        return "application/octet-stream"
    return one_line(ctype).lower()


def _disposition(part: Message) -> str:
    try:
        value = part.get_content_disposition()
    except Exception:
        return ""
    return one_line(value).strip().lower() if isinstance(value, str) else ""


def _charset(part: Message) -> str | None:
    try:
        value = part.get_param("charset")
    except Exception:
        return None
    if isinstance(value, tuple):  # RFC 2231 form
        value = value[2]
    return value if isinstance(value, str) else None


def _filename(part: Message) -> str:
    """The attachment's name: RFC 2231 parameters, then RFC 2047 words inside them."""
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        try:
            value = part.get_param(param, header=header)
        except Exception:
            continue
        if value is None:
            continue
        if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded value)
            charset, _language, text = value
            try:
                # get_param left one code point per original byte
                raw = str(text).encode("latin-1", "surrogateescape")
            except UnicodeEncodeError:
                name = str(text)
            else:
                name = decode_bytes(raw, charset or None)[0]
        else:
            name = collapse_rfc2231_value(value)
        name = decode_header_value(one_line(name))
        name = replace_controls(name, "", c0_only=True).strip()
        if name:
            return name
    return ""


def _message_attachment(part: Message, view: Message, ctype: str) -> Attachment:
    name = _filename(view)
    if not name and ctype in _EML_TYPES:
        inner = part.get_payload()
        subject = ""
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            raw_subject = inner[0].get("subject")
            if raw_subject is not None:
                subject = decode_header_value(one_line(str(raw_subject))).strip()
                subject = replace_controls(subject, "", c0_only=True)[:_MAX_SUBJECT_NAME]
        name = f"{subject}.eml" if subject else "message.eml"
    elif not name:
        name = ctype.split("/", 1)[1] + ".txt"
    return Attachment(name, ctype, _serialized_size(part))


def _serialized_size(part: Message) -> int:
    """Size of a ``message/*`` part's content as it travels (CRLF line endings)."""
    inner = part.get_payload()
    if not isinstance(inner, list):
        return 0
    total = 0
    for message in inner:
        if not isinstance(message, Message):
            continue
        try:
            buffer = BytesIO()
            BytesGenerator(buffer, mangle_from_=False, policy=_SERIALIZE).flatten(message)
            total += len(buffer.getvalue())
        except Exception:  # RecursionError on deep trees, odd headers: estimate instead
            total += _estimate_size(message)
    return total


def _estimate_size(root: Message) -> int:
    """An iterative estimate of a subtree's wire size, used when it cannot be flattened."""
    total = 0
    stack: list[Message] = [root]
    while stack:
        part = stack.pop()
        for name, value in part.raw_items():
            total += len(name) + 2 + len(str(value)) + 2
        total += 2
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(child for child in payload if isinstance(child, Message))
        elif isinstance(payload, str):
            total += len(payload)
    return total
