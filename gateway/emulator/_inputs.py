"""Validated request bodies -> what the model reads (and the ``comments`` it returns)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from ._model import DocText, TextPart
from ._text import email_text, header_value

__all__ = ["comment_key", "comments_for", "predict_docs", "raw_email_docs"]


def raw_email_docs(body: Mapping[str, Any]) -> list[DocText]:
    """One ``DocText`` per ``predict-raw-emails`` document: subject and body of message 0."""
    docs = []
    for doc in body["documents"]:
        text = email_text(doc["raw_email"])
        docs.append(
            DocText(
                parts=(TextPart(0, "subject", text.subject), TextPart(0, "body", text.body)),
                extra=text.attachment_names,
            )
        )
    return docs


def predict_docs(body: Mapping[str, Any]) -> list[DocText]:
    """One ``DocText`` per ``predict`` document: subject, body, signature of each message."""
    docs = []
    for doc in body["documents"]:
        parts = []
        for i, message in enumerate(doc["messages"]):
            for part in ("subject", "body", "signature"):
                if part in message:
                    parts.append(TextPart(i, part, message[part]["text"]))
        docs.append(DocText(parts=tuple(parts)))
    return docs


def comment_key(doc: Mapping[str, Any]) -> str:
    """The id billing and dedup see: ``comment_id``, else the Message-ID, else a hash."""
    if isinstance(doc.get("comment_id"), str):
        return str(doc["comment_id"])
    message_id = header_value(doc["raw_email"]["headers"], "Message-ID")
    if message_id and message_id.strip().strip("<>"):
        return message_id.strip().strip("<>")
    blob = repr(sorted(doc["raw_email"].get("body", {}).items())).encode("utf-8", "surrogatepass")
    return "sha256:" + hashlib.sha256(blob).hexdigest()[:32]


def _timestamp(headers: Mapping[str, Any]) -> str:
    date = header_value(headers, "Date")
    if date:
        try:
            return parsedate_to_datetime(date).isoformat()
        except (TypeError, ValueError, IndexError):
            pass
    return "1970-01-01T00:00:00+00:00"


def comments_for(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``comments`` of ``include_comments: true``: the very texts the offsets index."""
    comments = []
    for doc in body["documents"]:
        raw = doc["raw_email"]
        text = email_text(raw)
        key = comment_key(doc)
        message: dict[str, Any] = {
            "subject": {"text": text.subject},
            "body": {"text": text.body},
        }
        if text.sender:
            message["from"] = text.sender
        to = header_value(raw["headers"], "To")
        if to:
            message["to"] = [a.strip() for a in to.split(",") if a.strip()]
        comments.append(
            {
                "id": key.encode("utf-8", "surrogatepass").hex()
                if "comment_id" not in doc
                else key,
                "timestamp": _timestamp(raw["headers"]),
                "user_properties": dict(doc.get("user_properties", {})),
                "messages": [message],
                "text_format": "plain",
                "attachments": [dict(a) for a in raw.get("attachments", [])],
                "thread_id": None,
            }
        )
    return comments
