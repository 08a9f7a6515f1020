"""Helpers for the SMTP front tests: small processors, an in-process server, raw clients."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway import replies
from gateway.config import SmtpConfig
from gateway.pipeline import InboundMessage
from gateway.replies import Reply
from gateway.smtp import Authenticator, SmtpServer, build_tls_context

__all__ = [
    "RawClient",
    "RecordingProcessor",
    "make_self_signed_cert",
    "running_server",
    "smtp_config",
]


class RecordingProcessor:
    """Records every message; answers ``queued(id)`` after ``delay`` seconds, or raises."""

    def __init__(self, *, delay: float = 0.0, error: BaseException | None = None) -> None:
        self.messages: list[InboundMessage] = []
        self.delay = delay
        self.error = error
        self.started = asyncio.Event()
        self.closed = False

    async def process(self, msg: InboundMessage) -> Reply:
        self.messages.append(msg)
        self.started.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return replies.queued(msg.queue_id)

    async def aclose(self) -> None:
        self.closed = True


def smtp_config(**overrides: Any) -> SmtpConfig:
    """An SmtpConfig listening on an ephemeral loopback port."""
    values: dict[str, Any] = {"listen": "127.0.0.1:0", "hostname": "gw.test", "timeout": 30}
    values.update(overrides)
    return SmtpConfig(**values)


@asynccontextmanager
async def running_server(
    processor: Any, config: SmtpConfig | None = None, *, users: dict[str, str] | None = None
) -> AsyncIterator[SmtpServer]:
    """An SmtpServer on the test's own loop; closed (drained) on exit."""
    config = config or smtp_config()
    tls = (
        build_tls_context(
            config.tls_cert_file,
            config.tls_key_file,
            min_version=config.tls_min_version,
            ciphers=config.tls_ciphers,
        )
        if config.tls_cert_file
        else None
    )
    server = SmtpServer(
        config,
        processor,
        authenticator=Authenticator(users) if users is not None else None,
        tls_context=tls,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.aclose(grace=2.0)


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway EC certificate for ``localhost`` made with the openssl CLI."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl CLI is needed for the TLS tests"
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def client_tls_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the throwaway certificate."""
    return ssl.create_default_context(cafile=str(cert))


class RawClient:
    """A blocking line-oriented SMTP client over a plain socket, for byte-exact tests."""

    def __init__(self, port: int, timeout: float = 10.0, *, source: str | None = None) -> None:
        # source: connect from that loopback address (127.0.0.2 ...) to act as another client.
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""

    def reply(self) -> str:
        """Read one (possibly multi-line) reply; return its last line."""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed by server; pending {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            if len(text) < 4 or text[3] != "-":
                return text

    def cmd(self, line: str | bytes) -> str:
        self.send(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()
