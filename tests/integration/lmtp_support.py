"""A scripted LMTP server (RFC 2033) for the delivery tests, on loopback TCP or a Unix
socket: LHLO (PIPELINING, 8BITMIME), MAIL, RCPT, DATA, RSET, NOOP, QUIT, and after the
final dot one reply per accepted recipient, taken from ``after_data`` (default 250).
It runs in its own thread and loop, so tests on either loop can use it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.testing import free_port

__all__ = ["LmtpServer", "running_lmtp"]


@dataclass
class LmtpServer:
    port: int = 0
    path: str | None = None
    after_data: dict[str, str] = field(default_factory=dict)  # recipient -> reply line
    delivered: list[tuple[str, bytes]] = field(default_factory=list)  # (rcpt, content)
    connections: int = 0
    commands: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"lmtp+unix://{self.path}" if self.path else f"lmtp://127.0.0.1:{self.port}"


async def _session(srv: LmtpServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    srv.connections += 1
    w.write(b"220 lmtp.test LMTP ready\r\n")
    rcpts: list[str] = []
    while line := await reader.readline():
        command = line.decode().strip()
        srv.commands.append(command.split(" ")[0].upper())
        verb = command[:4].upper()
        if verb == "LHLO":
            w.write(b"250-lmtp.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        elif verb == "MAIL":
            rcpts = []
            w.write(b"250 2.1.0 Ok\r\n")
        elif verb == "RCPT":
            rcpts.append(command.partition("<")[2].rstrip(">"))
            w.write(b"250 2.1.5 Ok\r\n")
        elif verb == "DATA":
            w.write(b"354 go ahead\r\n")
            await w.drain()
            body = bytearray()
            while (data := await reader.readline()) != b".\r\n":
                body += data[1:] if data.startswith(b"..") else data
            for rcpt in rcpts:
                reply = srv.after_data.get(rcpt, f"250 2.0.0 <{rcpt}> Saved")
                if reply.startswith("250"):
                    srv.delivered.append((rcpt, bytes(body)))
                w.write(reply.encode() + b"\r\n")
            rcpts = []
        elif verb in ("RSET", "NOOP"):
            rcpts = []
            w.write(b"250 2.0.0 Ok\r\n")
        elif verb == "QUIT":
            w.write(b"221 2.0.0 Bye\r\n")
            break
        else:
            w.write(b"500 5.5.1 Unknown command\r\n")
        await w.drain()
    w.close()


@contextmanager
def running_lmtp(directory: Path | None = None) -> Iterator[LmtpServer]:
    """The server on a free loopback port, or on ``directory/lmtp`` when given."""
    srv = LmtpServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await _session(srv, r, w)

        if directory is not None:
            srv.path = str(directory / "lmtp")
            server = await asyncio.start_unix_server(handle, srv.path)
        else:
            srv.port = free_port()
            server = await asyncio.start_server(handle, "127.0.0.1", srv.port)
        started.set()
        async with server:
            await stop.wait()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield srv
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        with contextlib.suppress(Exception):
            loop.close()
