"""HTTP answers -> the gateway's exception tree (``errors.py``), for the classifier client.

Kept apart from the client so that the mapping can be read (and tested) in one place:

    401, 403            AuthError
    404                 NotFoundError
    400, 413, 422       InvalidRequestError     (other 4xx: ClassifierRequestError)
    429                 RateLimitedError        retry_after from ``Retry-After``
    5xx                 ServerError
    httpx transport     TransportError
    2xx, bad body       MalformedResponseError

Messages are short, come from the API's ``{"status": "error", "message": ...}`` body when
there is one, and pass through ``redact.scrub``: no secret reaches an exception.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from typing import Any

import httpx

from gateway.errors import (
    AuthError,
    ClassifierError,
    ClassifierRequestError,
    InvalidRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from gateway.redact import scrub

__all__ = [
    "MAX_MESSAGE",
    "error_from_response",
    "error_from_transport",
    "json_object",
    "parse_retry_after",
]

MAX_MESSAGE = 200


def _short(text: str) -> str:
    text = " ".join(scrub(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110
    §10.2.3). None when absent or unreadable; never negative."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms carry no zone: they are GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_message(response: httpx.Response) -> str:
    """The API's own error text, or a one-line description of a foreign body (a proxy's
    HTML page must not end up in a log line)."""
    reason = response.reason_phrase or "error"
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return _short(f"HTTP {response.status_code}: {body['message']}")
    kind = response.headers.get("content-type", "").split(";")[0].strip() or "no content type"
    if not response.content:
        return f"HTTP {response.status_code} {reason} (empty body)"
    return f"HTTP {response.status_code} {reason} (non-API body, {_short(kind)})"


def error_from_response(response: httpx.Response) -> ClassifierError:
    """The exception for a non-2xx answer."""
    status = response.status_code
    message = _error_message(response)
    if status in (401, 403):
        return AuthError(message, status=status)
    if status == 404:
        return NotFoundError(message, status=status)
    if status in (400, 413, 422):
        return InvalidRequestError(message, status=status)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return RateLimitedError(message, status=status, retry_after=retry_after)
    if 500 <= status <= 599:
        return ServerError(message, status=status)
    if 400 <= status <= 499:
        return ClassifierRequestError(message, status=status)
    # 1xx/3xx: redirects are not followed (a token must not travel to another host).
    return MalformedResponseError(f"unexpected {message}", status=status)


def error_from_transport(exc: httpx.HTTPError) -> TransportError:
    """A connection, protocol or socket-timeout failure (retried)."""
    detail = str(exc) or type(exc).__name__
    return TransportError(_short(f"{type(exc).__name__}: {detail}"))


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body of a 2xx answer as a JSON object with ``status: ok``."""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise MalformedResponseError(
            f"HTTP {response.status_code} body is not JSON", status=response.status_code
        ) from None
    if not isinstance(body, dict):
        raise MalformedResponseError(
            f"expected a JSON object, got {type(body).__name__}", status=response.status_code
        )
    if body.get("status") != "ok":
        detail = body.get("message")
        text = f"status is {body.get('status')!r}, not 'ok'"
        if isinstance(detail, str) and detail:
            text += f": {detail}"
        raise MalformedResponseError(_short(text), status=response.status_code)
    return body
