"""Validated scalar types of the rule file model.

Each check raises ``PydanticCustomError`` with a message written for the rule author;
the loader maps it back to the YAML line and column.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from gateway.predictions import split_label

from ._addresses import check_address, check_address_pattern
from ._placeholders import parse_template

__all__ = [
    "Address",
    "AddressList",
    "AddressPatterns",
    "HeaderName",
    "LabelPattern",
    "ListName",
    "Probability",
    "Regex",
    "RemovedHeaderNames",
    "ReplyText",
    "RuleName",
    "Sentiment",
    "Size",
    "SubjectPrefix",
    "TemplateText",
    "parse_size",
]

RULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LIST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
HEADER_NAME_PATTERN = r"^[!-9;-~]{1,76}$"  # RFC 5322 ftext: printable ASCII except ':'
_RULE_NAME = re.compile(RULE_NAME_PATTERN)
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# Headers that carry the message's structure or identity: a second copy prepended by a
# rule would change how every reader parses the message.
_RESERVED_HEADERS = frozenset(
    {
        "subject",
        "from",
        "to",
        "cc",
        "bcc",
        "sender",
        "reply-to",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "dkim-signature",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "x-cm-quarantine",
    }
)


def _fail(kind: str, message: str) -> PydanticCustomError:
    # Without a context pydantic does not format the template: braces stay as written.
    return PydanticCustomError(kind, message)


def _no_crlf(value: str, what: str) -> None:
    if "\r" in value or "\n" in value:
        raise _fail("crlf", f"{what} must be one line (no CR/LF)")
    if "\x00" in value:
        raise _fail("nul", f"{what} must not contain NUL")


def _rule_name(value: str) -> str:
    if not _RULE_NAME.match(value):
        raise _fail(
            "rule_name",
            f"bad rule name {value!r}: 1-64 of letters, digits, '.', '_', '-' "
            "(it is written into the X-CM-Rules header)",
        )
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise _fail("regex", f"bad regex {value!r}: {exc}") from None
    return value


def _address(value: str) -> str:
    problem = check_address(value)
    if problem:
        raise _fail("address", problem)
    return value


def _address_pattern(value: str) -> str:
    problem = check_address_pattern(value)
    if problem:
        raise _fail("address_pattern", problem)
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise _fail(
            "header_name",
            f"bad header name {value!r}: 1-76 printable ASCII characters, no ':' or space",
        )
    return value


def _added_header_name(value: str) -> str:
    _header_name(value)
    if value.lower() in _RESERVED_HEADERS:
        hint = " (use prefix_subject)" if value.lower() == "subject" else ""
        raise _fail("reserved_header", f"add_header cannot set {value!r}{hint}")
    return value


def _removed_header_name(value: str) -> str:
    _header_name(value)
    lowered = value.lower()
    # Received counts hops (loop detection) and X-CM-* is the gateway's own verdict.
    if lowered in _RESERVED_HEADERS or lowered == "received" or lowered.startswith("x-cm-"):
        raise _fail("reserved_header", f"remove_header cannot remove {value!r}")
    return value


def _template(value: str) -> str:
    _no_crlf(value, "a header value")
    try:
        parse_template(value)
    except ValueError as exc:
        raise _fail("placeholder", str(exc)) from None
    return value


def _reply_text(value: str) -> str:
    _no_crlf(value, "a reply text")
    if any(not 32 <= ord(c) < 127 for c in value):
        raise _fail("reply_text", "a reply text must be printable ASCII (SMTP replies are ASCII)")
    if len(value) > 400:
        raise _fail("reply_text", "a reply text must be at most 400 characters")
    return value


def _subject_prefix(value: str) -> str:
    _no_crlf(value, "a subject prefix")
    if not value.strip():
        raise _fail("empty", "a subject prefix must not be blank")
    return value


def _label_pattern(value: str) -> str:
    parts = split_label(value)
    if not parts:
        raise _fail("label", "a label name must not be empty")
    if "*" in parts[:-1] or any("*" in p and p != "*" for p in parts):
        raise _fail(
            "label",
            f"bad label {value!r}: '*' may only stand alone as the last part ('Parent > *')",
        )
    return value


def parse_size(value: Any) -> Any:
    """``10MB`` / ``512KB`` / ``1.5 MiB`` / ``2048`` -> bytes (K/M/G are powers of 1024)."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise _fail("size", f"bad size {value!r}: a number of bytes, or e.g. '512KB', '10MB'")
        number, unit = match.groups()
        return int(float(number) * _UNITS[(unit or "").lower()[:1]])
    return value


RuleName = Annotated[
    str,
    AfterValidator(_rule_name),
    WithJsonSchema({"type": "string", "pattern": RULE_NAME_PATTERN}),
]
Regex = Annotated[str, AfterValidator(_regex), Field(json_schema_extra={"format": "regex"})]
Address = Annotated[str, AfterValidator(_address)]
AddressList = Annotated[
    list[Address],
    Field(min_length=1),
    BeforeValidator(_one_or_many, json_schema_input_type=str | list[str]),
]
AddressPatterns = Annotated[
    list[Annotated[str, AfterValidator(_address_pattern)]],
    Field(min_length=1),
    BeforeValidator(_one_or_many, json_schema_input_type=str | list[str]),
]
HeaderName = Annotated[
    str,
    AfterValidator(_header_name),
    WithJsonSchema({"type": "string", "pattern": HEADER_NAME_PATTERN}),
]
AddedHeaderName = Annotated[str, AfterValidator(_added_header_name)]
TemplateText = Annotated[str, AfterValidator(_template)]
ReplyText = Annotated[str, AfterValidator(_reply_text)]
SubjectPrefix = Annotated[str, AfterValidator(_subject_prefix)]
LabelPattern = Annotated[str, AfterValidator(_label_pattern)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Sentiment = Annotated[float, Field(ge=-1.0, le=1.0)]
Size = Annotated[
    int,
    Field(ge=0),
    BeforeValidator(parse_size, json_schema_input_type=int | str),
]
RemovedHeaderNames = Annotated[
    list[Annotated[str, AfterValidator(_removed_header_name)]],
    Field(min_length=1),
    BeforeValidator(_one_or_many, json_schema_input_type=str | list[str]),
]
ListName = Annotated[str, Field(pattern=LIST_NAME_PATTERN)]
