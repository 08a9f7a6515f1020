"""Strict request validation for the emulated prediction routes.

As strict as the real API's own schema (``additionalProperties: false`` everywhere, the
limits of ``cm-api.md`` §2-§3), so that a payload bug shows up against the emulator and
not first in production. Every message names the JSON path of the offending value, e.g.
``documents[3].raw_email.body.plain: longer than 65536 characters``.

The 400 / 422 split (the real API documents both without saying where the line is; this
is our rule, applied everywhere):

* **400 Bad Request** - the body is not a request of this route at all: not JSON, a JSON
  value of the wrong *type* anywhere (an object where an array belongs, a string where a
  number belongs, ``true`` as an attachment ``size``), a required member absent, a member
  the schema does not know, or an empty ``documents`` / ``uids`` array (nothing to do).
* **422 Unprocessable Entity** - a well-typed request whose *values* break a limit, a
  pattern, a range or a rule of the model: too many documents, a string too long, a
  ``transform_tag`` or ``comment_id`` of the wrong form, a threshold outside 0..1, both
  ``raw`` and ``parsed`` headers, a user property with a bad prefix or a value that does
  not fit its prefix, a label the model does not know.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from gateway.documents import (
    MAX_ATTACHMENT_FIELD,
    MAX_ATTACHMENTS,
    MAX_DOCUMENTS,
    MAX_HTML,
    MAX_PLAIN,
    MAX_RAW_HEADERS,
)

__all__ = [
    "COMMENT_ID_RE",
    "DATASET_RE",
    "PROJECT_RE",
    "TRANSFORM_TAG_RE",
    "UID_RE",
    "VALIDATORS",
    "RequestInvalid",
    "validate_predict",
    "validate_predict_comments",
    "validate_predict_raw_emails",
]

PROJECT_RE = re.compile(r"^[A-Za-z0-9\-_.]{1,1024}$")
DATASET_RE = re.compile(r"^[A-Za-z0-9\-_]{1,256}$")
TRANSFORM_TAG_RE = re.compile(r"^[A-Za-z0-9_-]+\.[0-9]+\.[A-Za-z0-9_-]+$")
_COMMENT_ID_BODY = r"[\w\x21-\x2e\x3a-\x40\x5b-\x60\x7b-\x7e]{1,1024}"
COMMENT_ID_RE = re.compile(rf"^{_COMMENT_ID_BODY}$")
UID_RE = re.compile(rf"^[0-9a-f]{{16}}\.{_COMMENT_ID_BODY}$")

MAX_LABELS = 4096
MAX_LABEL_PARTS = 64
MAX_LABEL_PART = 64
MAX_TRANSFORM_TAG = 256
MAX_USER_PROPERTY_NAME = 1024
MAX_USER_PROPERTY_VALUE = 65_536
MAX_MESSAGES = 2048
MAX_TEXT = 65_536
MAX_ADDRESS = 512
MAX_ADDRESSES = 2048
MAX_LANGUAGE = 8
MAX_UIDS = 4096

# Label names the model knows, as tuples of parts; None skips the check.
KnownLabels = Collection[tuple[str, ...]] | None


class RequestInvalid(Exception):
    """The request does not validate; ``status`` is 400 or 422, ``message`` names the path."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


def _bad(path: str, what: str) -> NoReturn:
    raise RequestInvalid(400, f"{path}: {what}")


def _unprocessable(path: str, what: str) -> NoReturn:
    raise RequestInvalid(422, f"{path}: {what}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(
    value: object, path: str, *, required: Collection[str], optional: Collection[str]
) -> dict[str, Any]:
    """``value`` as a dict with only known keys and every required key; else 400."""
    if not isinstance(value, dict):
        _bad(path or "body", f"expected an object, got {_json_type(value)}")
    for key in value:
        if key not in required and key not in optional:
            _bad(_join(path, str(key)), "unknown field")
    for key in required:
        if key not in value:
            _bad(_join(path, key), "required field missing")
    return value


def _array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        _bad(path, f"expected an array, got {_json_type(value)}")
    return value


def _string(value: object, path: str, *, min_len: int = 0, max_len: int | None = None) -> str:
    if not isinstance(value, str):
        _bad(path, f"expected a string, got {_json_type(value)}")
    if len(value) < min_len:
        _unprocessable(path, "must not be empty" if min_len == 1 else f"shorter than {min_len}")
    if max_len is not None and len(value) > max_len:
        _unprocessable(path, f"longer than {max_len} characters")
    return value


def _number(value: object, path: str) -> float:
    # bool is an int subclass in Python, but JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        _bad(path, f"expected a number, got {_json_type(value)}")
    if not math.isfinite(value):
        _unprocessable(path, "must be a finite number")
    return float(value)


def _items(
    value: object, path: str, *, min_items: int, max_items: int, empty_status: int = 422
) -> list[Any]:
    items = _array(value, path)
    if len(items) < min_items:
        raise RequestInvalid(empty_status, f"{path}: needs at least {min_items} item(s)")
    if len(items) > max_items:
        _unprocessable(path, f"more than {max_items} items ({len(items)})")
    return items


def _threshold(value: object, path: str) -> None:
    if isinstance(value, str):
        if value != "auto":
            _unprocessable(path, f"expected a number between 0 and 1 or 'auto', got {value!r}")
        return
    number = _number(value, path)
    if not 0.0 <= number <= 1.0:
        _unprocessable(path, f"must be between 0 and 1, got {number}")


def _labels(value: object, path: str, known: KnownLabels) -> None:
    for i, item in enumerate(_items(value, path, min_items=0, max_items=MAX_LABELS)):
        here = f"{path}[{i}]"
        obj = _object(item, here, required=("name",), optional=("threshold",))
        parts = _items(obj["name"], f"{here}.name", min_items=1, max_items=MAX_LABEL_PARTS)
        for j, part in enumerate(parts):
            _string(part, f"{here}.name[{j}]", min_len=1, max_len=MAX_LABEL_PART)
        if "threshold" in obj:
            threshold = _number(obj["threshold"], f"{here}.threshold")
            if not 0.0 <= threshold <= 1.0:
                _unprocessable(f"{here}.threshold", f"must be between 0 and 1, got {threshold}")
        if known is not None and tuple(parts) not in known:
            _unprocessable(f"{here}.name", f"unknown label {' > '.join(parts)!r}")


def _user_properties(value: object, path: str) -> None:
    if not isinstance(value, dict):
        _bad(path, f"expected an object, got {_json_type(value)}")
    for key, prop in value.items():
        here = f"{path}[{key!r}]"
        kind, sep, name = str(key).partition(":")
        if not sep or kind not in ("string", "number") or not name.strip():
            _unprocessable(here, "key must be 'string:<Name>' or 'number:<Name>'")
        if len(name) > MAX_USER_PROPERTY_NAME:
            _unprocessable(here, f"name longer than {MAX_USER_PROPERTY_NAME} characters")
        if kind == "string":
            if not isinstance(prop, str):
                _unprocessable(here, f"a string: property needs a string, got {_json_type(prop)}")
            if not prop.strip():
                _unprocessable(here, "a string: property must not be empty")
            if len(prop) > MAX_USER_PROPERTY_VALUE:
                _unprocessable(here, f"longer than {MAX_USER_PROPERTY_VALUE} characters")
        else:
            if isinstance(prop, bool) or not isinstance(prop, int | float):
                _unprocessable(here, f"a number: property needs a number, got {_json_type(prop)}")
            if not math.isfinite(prop):
                _unprocessable(here, "must be a finite number")


def _raw_email(value: object, path: str) -> None:
    obj = _object(value, path, required=("headers", "body"), optional=("attachments",))
    here = f"{path}.headers"
    headers = _object(obj["headers"], here, required=(), optional=("raw", "parsed"))
    if "raw" in headers and "parsed" in headers:
        _unprocessable(here, "exactly one of 'raw' or 'parsed', not both")
    if "raw" in headers:
        _string(headers["raw"], f"{here}.raw", max_len=MAX_RAW_HEADERS)
    elif "parsed" in headers:
        parsed = headers["parsed"]
        if not isinstance(parsed, dict):
            _bad(f"{here}.parsed", f"expected an object, got {_json_type(parsed)}")
        for name, header_value in parsed.items():
            hp = f"{here}.parsed[{name!r}]"
            if not name:
                _unprocessable(hp, "header name must not be empty")
            _string(header_value, hp, max_len=MAX_RAW_HEADERS)
    else:
        _bad(here, "required field missing: one of 'raw' or 'parsed'")
    here = f"{path}.body"
    body = _object(obj["body"], here, required=(), optional=("plain", "html"))
    if not body:
        _bad(here, "required field missing: 'plain' and/or 'html'")
    if "plain" in body:
        _string(body["plain"], f"{here}.plain", max_len=MAX_PLAIN)
    if "html" in body:
        _string(body["html"], f"{here}.html", max_len=MAX_HTML)
    if "attachments" in obj:
        attachments = _items(
            obj["attachments"], f"{path}.attachments", min_items=0, max_items=MAX_ATTACHMENTS
        )
        for i, att in enumerate(attachments):
            ap = f"{path}.attachments[{i}]"
            a = _object(att, ap, required=("name", "size", "content_type"), optional=())
            _string(a["name"], f"{ap}.name", max_len=MAX_ATTACHMENT_FIELD)
            _string(a["content_type"], f"{ap}.content_type", max_len=MAX_ATTACHMENT_FIELD)
            size = a["size"]
            if isinstance(size, bool) or not isinstance(size, int):
                # 10.0 is a JSON number but not an integer: a type error like the rest.
                _bad(f"{ap}.size", f"expected an integer, got {_json_type(size)}")
            if size < 0:
                _unprocessable(f"{ap}.size", f"must be >= 0, got {size}")


def _common_options(body: dict[str, Any], known: KnownLabels) -> None:
    if "threshold" in body:
        _threshold(body["threshold"], "threshold")
    if "labels" in body:
        _labels(body["labels"], "labels", known)


def _documents(body: dict[str, Any]) -> list[Any]:
    # An empty batch is "nothing to do": 400, like any request that is not one (see above).
    return _items(
        body["documents"], "documents", min_items=1, max_items=MAX_DOCUMENTS, empty_status=400
    )


def validate_predict_raw_emails(body: object, *, known_labels: KnownLabels = None) -> None:
    """Validate a ``predict-raw-emails`` body; raise ``RequestInvalid(400|422, message)``.

    ``known_labels`` (tuples of parts) enables the unknown-label check of ``labels``;
    None skips it (the server always passes its model's taxonomy).
    """
    obj = _object(
        body,
        "",
        required=("documents", "transform_tag"),
        optional=("threshold", "labels", "include_comments"),
    )
    tag = _string(obj["transform_tag"], "transform_tag", min_len=1, max_len=MAX_TRANSFORM_TAG)
    if not TRANSFORM_TAG_RE.match(tag):
        _unprocessable("transform_tag", f"must look like <name>.<version>.<id>, got {tag!r}")
    if "include_comments" in obj and not isinstance(obj["include_comments"], bool):
        _bad("include_comments", f"expected a boolean, got {_json_type(obj['include_comments'])}")
    _common_options(obj, known_labels)
    for i, doc in enumerate(_documents(obj)):
        here = f"documents[{i}]"
        d = _object(doc, here, required=("raw_email",), optional=("user_properties", "comment_id"))
        _raw_email(d["raw_email"], f"{here}.raw_email")
        if "user_properties" in d:
            _user_properties(d["user_properties"], f"{here}.user_properties")
        if "comment_id" in d:
            cid = _string(d["comment_id"], f"{here}.comment_id")
            if not COMMENT_ID_RE.match(cid):
                _unprocessable(f"{here}.comment_id", "does not match the comment id pattern")


def _text_object(value: object, path: str) -> None:
    obj = _object(value, path, required=("text",), optional=("translated_from",))
    _string(obj["text"], f"{path}.text", max_len=MAX_TEXT)
    if "translated_from" in obj:
        _string(obj["translated_from"], f"{path}.translated_from", max_len=MAX_TEXT)


def _message(value: object, path: str) -> None:
    obj = _object(
        value,
        path,
        required=("body",),
        optional=("subject", "signature", "from", "to", "cc", "bcc", "sent_at", "language"),
    )
    for part in ("body", "subject", "signature"):
        if part in obj:
            _text_object(obj[part], f"{path}.{part}")
    if "from" in obj:
        _string(obj["from"], f"{path}.from", min_len=1, max_len=MAX_ADDRESS)
    for field in ("to", "cc", "bcc"):
        if field in obj:
            here = f"{path}.{field}"
            for i, address in enumerate(
                _items(obj[field], here, min_items=0, max_items=MAX_ADDRESSES)
            ):
                _string(address, f"{here}[{i}]", min_len=1, max_len=MAX_ADDRESS)
    if "sent_at" in obj:
        _string(obj["sent_at"], f"{path}.sent_at", min_len=1)
    if "language" in obj:
        _string(obj["language"], f"{path}.language", min_len=1, max_len=MAX_LANGUAGE)


def validate_predict(body: object, *, known_labels: KnownLabels = None) -> None:
    """Validate a ``predict`` body (comments format, ``cm-api.md`` §3.2)."""
    obj = _object(body, "", required=("documents",), optional=("threshold", "labels"))
    _common_options(obj, known_labels)
    for i, doc in enumerate(_documents(obj)):
        here = f"documents[{i}]"
        d = _object(
            doc,
            here,
            required=("messages",),
            optional=("timestamp", "user_properties", "text_format"),
        )
        messages = _items(d["messages"], f"{here}.messages", min_items=1, max_items=MAX_MESSAGES)
        for j, message in enumerate(messages):
            _message(message, f"{here}.messages[{j}]")
        if "timestamp" in d:
            _string(d["timestamp"], f"{here}.timestamp", min_len=1)
        if "user_properties" in d:
            _user_properties(d["user_properties"], f"{here}.user_properties")
        if "text_format" in d:
            fmt = _string(d["text_format"], f"{here}.text_format")
            if fmt not in ("plain", "markdown"):
                _unprocessable(f"{here}.text_format", f"must be 'plain' or 'markdown', got {fmt!r}")


def validate_predict_comments(body: object, *, known_labels: KnownLabels = None) -> None:
    """Validate a ``predict-comments`` body: ``uids`` 1..4096 of ``<16 hex>.<comment id>``."""
    obj = _object(body, "", required=("uids",), optional=("threshold", "labels"))
    _common_options(obj, known_labels)
    uids = _items(obj["uids"], "uids", min_items=1, max_items=MAX_UIDS, empty_status=400)
    for i, uid in enumerate(uids):
        text = _string(uid, f"uids[{i}]")
        if not UID_RE.match(text):
            _unprocessable(f"uids[{i}]", "must be '<16 hex source id>.<comment id>'")


Validator = Callable[..., None]
VALIDATORS: Mapping[str, Validator] = {
    "predict-raw-emails": validate_predict_raw_emails,
    "predict": validate_predict,
    "predict-comments": validate_predict_comments,
}
