"""Helpers for test_secrets_and_headers: a hostile classifier API in a thread, the
gateway as a real ``cm-gateway`` process, and checks of written header blocks."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = [
    "GatewayProcess",
    "HostileApi",
    "check_header_block",
    "hostile_api",
    "secret_forms",
]

ROOT = Path(__file__).resolve().parents[2]
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")

# A response, or a number of seconds to hold the request (longer than the client waits).
Responder = Callable[[dict[str, Any], dict[str, str]], web.StreamResponse | float]


def secret_forms(token: str) -> list[bytes]:
    """The token as it could leak: as is, and inside any base64 run (standard or URL-safe
    alphabet), whatever its offset there: encoded behind 0, 1 and 2 bytes of prefix, with
    the base64 characters the neighbours change cut off."""
    forms = {token.encode()}
    for prefix in (b"", b"x", b"xx"):
        for codec in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = codec(prefix + token.encode())
            forms.add(encoded[4 if prefix else 0 : -4])
    return sorted(forms)


@dataclass
class HostileApi:
    """A running hostile API: its URL and what it saw."""

    base_url: str
    seen: list[dict[str, str]] = field(default_factory=list)


@contextmanager
def hostile_api(respond: Responder) -> Iterator[HostileApi]:
    """A real HTTP server (aiohttp, loopback, its own thread and loop) answering every
    request with ``respond(json_body, request_headers)``."""
    loop = asyncio.new_event_loop()
    api = HostileApi("")

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        headers = dict(request.headers)
        api.seen.append(headers)
        response = respond(body if isinstance(body, dict) else {}, headers)
        if isinstance(response, int | float):
            await asyncio.sleep(response)
            return web.json_response({"status": "error", "message": "late"}, status=504)
        return response

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        api.base_url = f"http://127.0.0.1:{port}"
        return runner

    thread = threading.Thread(target=loop.run_forever, name="hostile-api", daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield api
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)
        loop.close()


class GatewayProcess:
    """``python -m gateway serve --config FILE`` with stdout and stderr in files."""

    def __init__(self, config: Path, env: dict[str, str], workdir: Path) -> None:
        self.out_path = workdir / "stdout.log"
        self.err_path = workdir / "stderr.log"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=self._out,
            stderr=self._err,
        )
        self.port = 0

    def wait_listening(self, timeout: float = 180.0) -> int:
        """The SMTP port, once ``cm-gateway listening on`` is printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text(errors="replace")
            match = re.search(r"cm-gateway listening on [^:\s]+:(\d+)", text)
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.proc.poll() is not None:
                break
            select.select([], [], [], 0.2)
        raise AssertionError(f"gateway did not start: {self.err_path.read_text()[-3000:]}")

    def stop(self) -> tuple[int, bytes]:
        """SIGTERM; the exit status and everything it wrote (stdout + stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()
        return self.proc.returncode, self.out_path.read_bytes() + self.err_path.read_bytes()


def _field_names(block: bytes) -> list[bytes]:
    return [
        line.split(b":", 1)[0].strip().lower()
        for line in block.split(b"\r\n")
        if line and line[:1] not in (b" ", b"\t")
    ]


def check_header_block(original: bytes, delivered: bytes, written: set[str]) -> dict[str, str]:
    """Assert what the gateway may do to a header block: every line CRLF-terminated, no
    bare CR/LF or NUL, at most 998 octets, continuation lines folded with whitespace,
    valid field names, only ``written`` fields added (plus a rewritten Subject), the body
    byte for byte. Returns the decoded values of the written fields."""
    head, sep, body = delivered.partition(b"\r\n\r\n")
    assert sep, "no end of header block"
    assert body == original.partition(b"\r\n\r\n")[2], "the body changed"
    lines = head.split(b"\r\n")
    assert lines[0][:1] not in (b" ", b"\t"), "header block starts with a continuation"
    for line in lines:
        assert b"\r" not in line and b"\n" not in line, f"bare CR/LF in {line[:80]!r}"
        assert b"\x00" not in line, f"NUL in {line[:80]!r}"
        assert len(line) <= 998, f"line of {len(line)} octets: {line[:80]!r}..."
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0]
            assert b":" in line and _FIELD_NAME.match(name), f"not a field: {line[:80]!r}"
    before = _field_names(original.partition(b"\r\n\r\n")[0])
    after = _field_names(head)
    wanted = {w.lower().encode() for w in written} | {b"subject"}
    added = list(after)
    for name in before:
        assert name in added, f"field {name!r} disappeared"
        added.remove(name)
    assert set(added) <= wanted, f"fields nobody asked for: {set(added) - wanted}"
    values: dict[str, str] = {}
    unfolded = re.sub(rb"\r\n[ \t]", b" ", head)
    untouched = set(re.sub(rb"\r\n[ \t]", b" ", original.partition(b"\r\n\r\n")[0]).split(b"\r\n"))
    for line in unfolded.split(b"\r\n"):
        name, _, raw = line.partition(b":")
        if name.strip().lower() in wanted and line not in untouched:
            assert raw.isascii(), f"8-bit header written: {line[:80]!r}"
            text = str(make_header(decode_header(raw.decode("ascii"))))
            assert not re.search(r"[\r\n\x00]", text), f"decoded {name!r} carries a break"
            values[name.decode().strip()] = text
    return values
