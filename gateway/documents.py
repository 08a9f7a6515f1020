"""The request side of ``predict-raw-emails``: one document per message, JSON-ready.

Limits come from the API's own schema (``../shared/research/cm-api.md`` §2); the payload
builder keeps under them and the emulator enforces them.
"""

from __future__ import annotations

import hashlib
from typing import NotRequired, TypedDict

from gateway._canonical_json import canonical_json

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_ATTACHMENT_FIELD",
    "MAX_DOCUMENTS",
    "MAX_HTML",
    "MAX_PLAIN",
    "MAX_RAW_HEADERS",
    "AttachmentMeta",
    "RawEmail",
    "RawEmailBody",
    "RawEmailDocument",
    "RawEmailHeaders",
    "UserProperties",
    "document_hash",
]

MAX_DOCUMENTS = 4096
MAX_RAW_HEADERS = 65_536
MAX_PLAIN = 65_536
MAX_HTML = 33_554_432
MAX_ATTACHMENTS = 128
MAX_ATTACHMENT_FIELD = 256

UserProperties = dict[str, str | float | int]


class RawEmailHeaders(TypedDict, total=False):
    raw: str
    parsed: dict[str, str]


class RawEmailBody(TypedDict, total=False):
    plain: str
    html: str


class AttachmentMeta(TypedDict):
    name: str
    size: int
    content_type: str


class RawEmail(TypedDict):
    headers: RawEmailHeaders
    body: RawEmailBody
    attachments: NotRequired[list[AttachmentMeta]]


class RawEmailDocument(TypedDict):
    raw_email: RawEmail
    user_properties: NotRequired[UserProperties]
    comment_id: NotRequired[str]


def document_hash(doc: RawEmailDocument) -> str:
    """SHA-256 hex of the canonical JSON (sorted keys, compact, UTF-8) of ``doc``: the
    digest in the dedup key and the shadow sample."""
    return hashlib.sha256(canonical_json(doc)).hexdigest()
