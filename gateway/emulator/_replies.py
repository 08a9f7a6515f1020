"""The emulator's error answers: the API's JSON error shape, and each injected fault."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from ._faults import HOLD_SECONDS, FaultSettings, html_502_body

__all__ = ["count_documents", "error_response", "fault_response"]


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """``{"status": "error", "message": ...}`` with ``status``."""
    return web.json_response(
        {"status": "error", "message": message}, status=status, headers=headers
    )


async def fault_response(
    settings: FaultSettings, closing: asyncio.Event, kind: str
) -> web.Response:
    """The answer of fault ``kind`` (not ``malformed``: that one corrupts a real answer)."""
    if kind == "timeout":
        try:
            await asyncio.wait_for(closing.wait(), HOLD_SECONDS)
        except TimeoutError:
            return error_response(504, "emulated timeout: held for an hour")
        return error_response(503, "emulator shutting down")
    if kind == "502-html":
        return web.Response(status=502, text=html_502_body(), content_type="text/html")
    status = int(kind)
    if status == 429:
        seconds = settings.retry_after
        value = str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
        return error_response(429, "emulated fault: too many requests", {"Retry-After": value})
    return error_response(status, f"emulated fault: HTTP {status}")


async def count_documents(request: web.Request) -> int:
    """How many documents a request the handler never read carries (a faulted call still
    loads the API): 0 when its body is not a JSON object with a ``documents`` list."""
    try:
        body: Any = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return 0
    documents = body.get("documents") if isinstance(body, dict) else None
    return len(documents) if isinstance(documents, list) else 0
