"""Mail as bytes: one header reader and decoder, the MIME walk, the document for the API.

    parsed = parse_message(raw)                 # headers, subject, text, attachments
    document = build_document(parsed, raw)      # one predict-raw-emails document

Also the header surgery the gateway does on raw messages (prepend, strip, subject tag,
without re-serialising anything) and line-end checks. Nothing here does I/O.
"""

from __future__ import annotations

from ._headers import (
    header_block,
    header_name_matcher,
    prefix_subject,
    prepend_headers,
    remove_headers,
    safe_header_value,
    strip_headers,
)
from ._lineends import (
    find_bare_line_ending,
    line_pieces,
    normalize_line_endings,
    scan_bare_line_ending,
)
from ._mimeheaders import header_fields
from ._payload import ParsedMessage, build_document, parse_headers, parse_message
from ._subject import apply_subject_prefix, apply_subject_prefixes

__all__ = [
    "ParsedMessage",
    "apply_subject_prefix",
    "apply_subject_prefixes",
    "build_document",
    "find_bare_line_ending",
    "header_block",
    "header_fields",
    "header_name_matcher",
    "line_pieces",
    "normalize_line_endings",
    "parse_headers",
    "parse_message",
    "prefix_subject",
    "prepend_headers",
    "remove_headers",
    "safe_header_value",
    "scan_bare_line_ending",
    "strip_headers",
]
