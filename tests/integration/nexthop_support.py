"""Next hops with TLS and AUTH for the delivery tests, and a wire tap.

- ``make_cert(dir, name, san)``: a throwaway self-signed certificate (openssl CLI) that
  is its own CA, so ``tls_ca_file`` = the certificate trusts exactly it;
- ``running_secure_sink(...)``: an aiosmtpd next hop (a test-only stand-in for Postfix
  with SASL) offering STARTTLS, or speaking TLS from the first byte, optionally with
  AUTH PLAIN/LOGIN (over TLS only), recording each message with its session's TLS and
  AUTH state;
- ``running_tap(port)``: a loopback TCP relay in front of a next hop that records every
  byte the gateway sends, to prove what went out in clear text.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.deliver._delivery import SmtpDelivery
from gateway.deliver._result import DeliveryResult
from gateway.deliver._security import Security
from gateway.testing import free_port

__all__ = [
    "SecureSink",
    "Tap",
    "deliver_once",
    "make_cert",
    "running_secure_sink",
    "running_tap",
    "secure_delivery",
]


async def deliver_once(
    delivery: SmtpDelivery, content: bytes, rcpt: str = "b@example.com"
) -> DeliveryResult:
    """One message from a@example.com to ``rcpt``, then ``delivery``'s pool closed."""
    try:
        return await delivery.deliver("a@example.com", [rcpt], content)
    finally:
        await delivery.aclose()


def secure_delivery(
    port: int, *, timeout: float, pool_size: int = 1, **security: object
) -> SmtpDelivery:
    """The SMTP next hop on 127.0.0.1:``port`` with ``Security(**security)`` (``tls``,
    ``implicit``, ``ca_file``, ``auth_user``, ``auth_password_env``)."""
    return SmtpDelivery(
        "127.0.0.1",
        port,
        timeout=timeout,
        local_hostname="gw.test",
        pool_size=pool_size,
        security=Security(**security),  # type: ignore[arg-type]
    )


def make_cert(directory: Path, name: str = "localhost", san: str = "") -> tuple[Path, Path]:
    """A self-signed EC certificate for ``name`` (subjectAltName ``san``, default
    ``DNS:localhost,IP:127.0.0.1``) and its key, in ``directory/name.*``."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl CLI is needed for the TLS tests"
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    san = san or "DNS:localhost,IP:127.0.0.1"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Delivered:
    """One message the sink accepted, with how its session was secured."""

    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool
    auth_user: str | None
    peer_port: int


@dataclass
class SecureSink:
    host: str
    port: int
    received: list[Delivered] = field(default_factory=list)
    auth_attempts: list[tuple[str, bool]] = field(default_factory=list)  # (mechanism, ok)


class _Handler:
    def __init__(self, sink: SecureSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        user = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            user = session.auth_data.login.decode()
        self.sink.received.append(
            Delivered(
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=bytes(envelope.original_content),
                # aiosmtpd sets session.ssl after STARTTLS only; smtps shows in the transport.
                tls=session.ssl is not None
                or server.transport.get_extra_info("ssl_object") is not None,
                auth_user=user,
                peer_port=int(session.peer[1]),
            )
        )
        return "250 2.0.0 Ok: queued as TLS1"


class _LmtpController(Controller):
    def factory(self) -> LMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


@contextmanager
def running_secure_sink(
    cert: tuple[Path, Path] | None,
    *,
    implicit: bool = False,
    users: dict[str, str] | None = None,
    exclude_mechanisms: list[str] | None = None,
    lmtp: bool = False,
) -> Iterator[SecureSink]:
    """A next hop on a free loopback port: STARTTLS with ``cert`` (None: no TLS at all),
    or TLS from the first byte when ``implicit``; AUTH against ``users`` when given;
    LMTP (LHLO, aiosmtpd's ``LMTP``) when ``lmtp``."""
    sink = SecureSink("127.0.0.1", free_port())
    context = None
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    params: dict[str, Any] = {}
    if context is not None and not implicit:
        params["tls_context"] = context
    if users is not None:

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and users.get(data.login.decode()) == data.password.decode()
            )
            sink.auth_attempts.append((mechanism, ok))
            return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

        params["authenticator"] = authenticator
        if exclude_mechanisms:
            params["auth_exclude_mechanism"] = exclude_mechanisms
        # aiosmtpd tells implicit TLS from none only through STARTTLS: with implicit TLS
        # the connection is encrypted from the start, so its own check must stand down.
        params["auth_require_tls"] = not implicit
    controller = (_LmtpController if lmtp else Controller)(
        _Handler(sink),
        hostname=sink.host,
        port=sink.port,
        server_hostname="sink.test",
        ready_timeout=10.0,
        ssl_context=context if implicit else None,
        **params,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@dataclass
class Tap:
    """What went from the gateway to the next hop, byte for byte, all connections."""

    port: int
    sent: bytearray = field(default_factory=bytearray)
    connections: int = 0


@contextmanager
def running_tap(target_port: int) -> Iterator[Tap]:
    """A loopback relay to ``target_port`` that records the client's bytes."""
    tap = Tap(free_port())
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server: asyncio.Server | None = None

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    tap.sent += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tap.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    async def serve() -> None:
        nonlocal server
        server = await asyncio.start_server(handle, "127.0.0.1", tap.port)
        started.set()
        async with server:
            with contextlib.suppress(asyncio.CancelledError):
                await server.serve_forever()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield tap
    finally:
        assert server is not None
        loop.call_soon_threadsafe(server.close)
        thread.join(5)
