"""One plain-SMTP connection to the next hop: an asyncio protocol that writes raw command
bytes and reads replies, one per command, in order, however they arrive.

aiosmtplib's client cannot pipeline (RFC 2920): its protocol parses one reply per
``data_received`` and drops bytes that arrive while no command is waiting, so several
replies in one packet would be lost. It also spends, per command, a lock, a regular
expression, ``wait_for`` and two futures. Here a command is ``write()`` and ``reply()``;
replies queue up as they are parsed, so a whole batch can be written at once and its
replies read afterwards. Timeouts are the caller's: ``SmtpDelivery`` bounds each whole
delivery, the pool each QUIT.

Errors are aiosmtplib's exception classes, so that callers map them as before.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
from collections import deque
from collections.abc import Iterable

from aiosmtplib import (
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPHeloError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from gateway.transports import stream_transport

from ._security import Security, TlsFailed, TlsUnavailable, authenticate, describe_tls_error
from ._xforward import XForward, commands

__all__ = ["SmtpClient", "mailbox"]

_MAX_REPLY = 64 * 1024  # a reply longer than this is no SMTP server's
# Characters that would end an address on a command line (or start a new command);
# allowed only inside a quoted local part, as in aiosmtplib's own check.
_UNSAFE = re.compile(r'[\s<>"]')
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\\r\n]|\\.)*"')


def mailbox(address: str) -> str:
    """``<address>`` for MAIL/RCPT; ``ValueError`` for one that could smuggle in
    parameters or a command. Sent as given: our SMTP front has parsed it already."""
    if _UNSAFE.search(address) and _UNSAFE.search(_QUOTED_LOCAL.sub("", address, count=1)):
        raise ValueError(f"Address {address!r} contains characters not permitted in a mailbox")
    return f"<{address}>"


class SmtpClient(asyncio.Protocol):
    """A connection to ``host:port``: ``connect()`` (greeting and EHLO), then commands.

    ``mail_accepted``: the next hop accepted MAIL FROM in the current transaction; before
    that, a failure has delivered nothing and the message may go out again on another
    connection. ``rset_due``: the pool wants an RSET before the next transaction and,
    the next hop pipelining, leaves it to go out in the same write as MAIL FROM.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        local_hostname: str | None = None,
        security: Security | None = None,
        lmtp: bool = False,
        socket_path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.security = security or Security()
        self.lmtp = lmtp  # LHLO, and one reply per accepted recipient after the dot
        self.socket_path = socket_path  # LMTP over a Unix socket instead of TCP
        self.encrypted = False
        self.extensions: dict[str, str] = {}  # EHLO keyword (lower case) -> its parameters
        self.mail_accepted = False
        self.rset_due = False
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._replies: deque[SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None  # why no more replies will come
        self._paused = False  # the transport's write buffer is over its high-water mark
        self._resumed: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = stream_transport(transport)
        assert stream is not None
        self._transport = stream

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        lines: list[bytes] = []
        while (end := buffer.find(b"\n", start)) != -1:
            line = bytes(buffer[start : end + 1])
            start = end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] == b"-":
                continue  # a multi-line reply goes on
            try:
                code = int(line[:3])
            except ValueError:
                self._fail(SMTPResponseException(-1, f"Malformed SMTP reply: {line[:80]!r}"))
                return
            text = b"\n".join(lines).decode("utf-8", "surrogateescape")
            self._replies.append(SMTPResponse(code, text))
            lines = []
            del buffer[:start]
            start = 0
        if len(buffer) > _MAX_REPLY:
            self._fail(SMTPResponseException(-1, "SMTP reply too long"))
        elif self._replies and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        error = SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)
        self._transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        if self._transport is not None:
            self._transport.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    # -- commands -----------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def pipelining(self) -> bool:
        """The next hop offered PIPELINING (RFC 2920) in its EHLO reply."""
        return "pipelining" in self.extensions

    @property
    def unsent(self) -> int:
        """Octets written but not yet taken by the socket (the transport's buffer)."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    def write(self, data: bytes) -> None:
        """Raw bytes to the next hop: commands (each ending in CRLF) or content."""
        if self._transport is None or self._transport.is_closing():
            raise self._error or SMTPServerDisconnected("Connection lost")
        self._transport.write(data)

    async def drain(self) -> None:
        """A turn for the other tasks, and, while the transport holds more unsent bytes
        than its high-water mark, a wait until the next hop has taken them: a large
        message is written in pieces, and without this wait every piece would pile up
        in the transport's buffer (a second copy of the message) as fast as we cut it."""
        if not self._paused:
            await asyncio.sleep(0)
            return
        self._resumed = asyncio.get_running_loop().create_future()
        await self._resumed
        if self._error is not None:
            raise self._error

    async def reply(self) -> SMTPResponse:
        """The next reply, in the order the commands were written."""
        while not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        response = self._replies.popleft()
        if response.code == 421:
            self.close()  # "closing transmission channel": it is no longer usable
        return response

    async def command(self, line: bytes) -> SMTPResponse:
        """One command (without its CRLF) in lock-step: write it, await its reply."""
        self.write(line + b"\r\n")
        return await self.reply()

    async def connect(self) -> None:
        """The connection, the greeting (220), EHLO/LHLO (250), STARTTLS and AUTH as
        ``security`` asks; within ``timeout``. TLS problems raise ``TlsUnavailable`` /
        ``TlsFailed``, AUTH ones ``AuthFailed`` (see ``_security``)."""
        security = self.security
        async with asyncio.timeout(self.timeout):
            await self._open()
            greeting = await self.reply()
            if greeting.code != 220:
                raise SMTPConnectResponseError(greeting.code, greeting.message)
            if self.local_hostname is None:
                self.local_hostname = await asyncio.to_thread(socket.getfqdn)
            self.extensions = await self._hello()
            if security.wants_starttls:
                if "starttls" in self.extensions:
                    await self._starttls()
                    self.extensions = await self._hello()  # RFC 3207 §4.2: forget the old
                elif security.must_encrypt:
                    raise TlsUnavailable(f"{self.where} offers no STARTTLS (tls = {security.tls})")
            if security.auth_user:
                password = os.environ.get(security.auth_password_env) or None
                await authenticate(self, security.auth_user, password)

    @property
    def where(self) -> str:
        """The next hop, for errors: ``host:port`` or the socket's path."""
        return self.socket_path or f"{self.host}:{self.port}"

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        security = self.security
        try:
            if self.socket_path is not None:
                await loop.create_unix_connection(lambda: self, self.socket_path)
            elif security.implicit:
                await loop.create_connection(
                    lambda: self,
                    self.host,
                    self.port,
                    ssl=security.context,
                    server_hostname=self.host,
                )
                self.encrypted = True
            else:
                await loop.create_connection(lambda: self, self.host, self.port)
        except ssl.SSLError as exc:  # before OSError: it is one
            raise TlsFailed(f"{self.where}: {describe_tls_error(exc)}") from None
        except OSError as exc:
            raise SMTPConnectError(f"Error connecting to {self.where}: {exc}") from exc

    async def _hello(self) -> dict[str, str]:
        assert self.local_hostname is not None
        verb = b"LHLO " if self.lmtp else b"EHLO "
        response = await self.command(verb + self.local_hostname.encode("ascii"))
        if response.code != 250:
            raise SMTPHeloError(response.code, response.message)
        return _extensions(response.message.splitlines()[1:])

    async def _starttls(self) -> None:
        response = await self.command(b"STARTTLS")
        if response.code != 220:
            if self.security.must_encrypt:
                raise TlsUnavailable(f"{self.where} refused STARTTLS: {response.code}")
            return  # opportunistic: go on in clear, as RFC 3207 allows
        if self._buffer or self._replies:
            # Bytes sent before the handshake would be read as if they came encrypted
            # (the STARTTLS injection attack): nothing more goes over this connection.
            self.abort()
            raise TlsFailed(f"{self.where} sent data after its STARTTLS reply")
        transport = self._transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        try:
            upgraded = await loop.start_tls(
                transport, self, self.security.context, server_hostname=self.host
            )
        except ssl.SSLError as exc:
            transport.abort()
            raise TlsFailed(f"{self.where}: {describe_tls_error(exc)}") from None
        except (ConnectionError, OSError) as exc:
            transport.abort()
            raise TlsFailed(f"{self.where}: TLS handshake failed: {type(exc).__name__}") from None
        if upgraded is None:  # pragma: no cover - asyncio returns None only when closing
            raise SMTPServerDisconnected("Connection lost during STARTTLS")
        self._transport = upgraded
        self.encrypted = True

    async def _expect_250(self, line: bytes) -> SMTPResponse:
        response = await self.command(line)
        if response.code != 250:
            raise SMTPResponseException(response.code, response.message)
        return response

    async def noop(self) -> SMTPResponse:
        return await self._expect_250(b"NOOP")

    async def rset(self) -> SMTPResponse:
        self.rset_due = False
        return await self._expect_250(b"RSET")

    async def quit(self) -> None:
        """QUIT, its reply (or the next hop hanging up) awaited, then closed."""
        try:
            await self.command(b"QUIT")
        except SMTPServerDisconnected:
            pass
        finally:
            self.close()

    async def xforward(self, forwarded: XForward) -> SMTPResponse | None:
        """Lock-step XFORWARD: only the attributes the next hop offered (nothing when it
        offered no XFORWARD). None when every command was accepted, else the first
        refusal (the rest are not sent). A 421 raises ``SMTPResponseException``."""
        for line in self.xforward_lines(forwarded):
            response = await self.command(line[:-2])
            if response.code == 421:
                raise SMTPResponseException(response.code, response.message)
            if response.code // 100 != 2:
                return response
        return None

    def xforward_lines(self, forwarded: XForward | None) -> list[bytes]:
        """The XFORWARD commands (with CRLF) for ``forwarded`` that this next hop takes."""
        offered = self.extensions.get("xforward")
        if forwarded is None or offered is None:
            return []
        return [(line + "\r\n").encode("ascii") for line in commands(forwarded, offered.split())]

    def close(self) -> None:
        """Close now; what was written but not yet sent is still sent."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close now and drop what was not sent: a DATA that never gets its final dot
        delivers nothing."""
        if self._transport is not None:
            self._transport.abort()


def _extensions(lines: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lines:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            found[keyword.lower()] = params.strip()
    return found
