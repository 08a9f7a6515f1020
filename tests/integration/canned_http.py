"""A tiny real HTTP server (aiohttp, loopback) that answers from a script of canned
responses, for the conditions the emulator cannot produce: a 403, a proxy's HTML 502,
a Retry-After given as an HTTP date, a custom provider's header."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Canned", "CannedServer", "canned_server", "ok_body"]


@dataclass
class Canned:
    status: int = 200
    body: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class CannedServer:
    base_url: str
    script: list[Canned]
    seen: list[Seen]

    @property
    def requests(self) -> int:
        return len(self.seen)


def ok_body(count: int) -> dict[str, Any]:
    """A valid predict body for ``count`` documents."""
    return {
        "status": "ok",
        "model": {"version": 7, "time": "2024-05-01T10:00:00Z"},
        "predictions": [[{"name": ["Finance"], "probability": 0.9}] for _ in range(count)],
    }


@asynccontextmanager
async def canned_server(script: list[Canned]) -> AsyncIterator[CannedServer]:
    """Serve ``script`` in order (the last entry repeats) on 127.0.0.1:<free port>."""
    seen: list[Seen] = []

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        seen.append(Seen(request.method, request.path, dict(request.headers), body))
        canned = script[min(len(seen), len(script)) - 1]
        if canned.delay:
            await asyncio.sleep(canned.delay)
        payload = canned.body
        if callable(payload):
            payload = payload(body)
        if canned.text is not None:
            return web.Response(status=canned.status, text=canned.text, headers=canned.headers)
        return web.json_response(payload, status=canned.status, headers=canned.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield CannedServer(f"http://127.0.0.1:{port}", script, seen)
    finally:
        await runner.cleanup()
