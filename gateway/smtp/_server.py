"""The SMTP listener: ``GatewaySMTP`` sessions (``gateway.smtp._session``) on the
service's own event loop.

    server = SmtpServer(config.smtp, processor, authenticator=..., tls_context=...)
    await server.start()                 # loop.create_server(...)
    ...
    await server.aclose(grace=30.0)      # stop accepting, let DATA finish, close the rest
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl

from gateway.clientlimit import ClientLimiter
from gateway.config import SmtpConfig, parse_listen
from gateway.errors import ConfigError
from gateway.logsetup import get_logger
from gateway.pipeline import MessageProcessor
from gateway.transports import stream_transport

from ._auth import Authenticator
from ._handler import GatewayHandler
from ._policy import RelayPolicy
from ._session import ConnectionTracker, GatewaySMTP

__all__ = [
    "IDENT",
    "SmtpServer",
    "build_tls_context",
    "command_call_limits",
]

IDENT = "cm-gateway ESMTP"
log = get_logger("cm-gateway.smtp")


def command_call_limits(smtp: SmtpConfig) -> dict[str, int]:
    """aiosmtpd's per-verb budgets. They count per CONNECTION, not per transaction
    (the per-transaction recipient cap is our own, in policy.py), and Postfix keeps a
    content-filter connection open for many messages: so the verbs that make progress
    get large budgets, and the ones a stalling client would loop on get a small one."""
    per_connection_messages = 100_000
    return {
        "MAIL": per_connection_messages,
        "RCPT": max(per_connection_messages, smtp.max_recipients * 100),
        "DATA": per_connection_messages,
        "RSET": per_connection_messages,
        # Postfix sends up to two XFORWARD commands per message.
        "XFORWARD": per_connection_messages * 2,
        "NOOP": 1_000,
        "AUTH": 5,
        "*": 200,  # EHLO, HELO, STARTTLS, HELP, VRFY, EXPN, QUIT
    }


def build_tls_context(
    cert_file: str,
    key_file: str,
    *,
    min_version: str = "TLSv1.2",
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """The server-side STARTTLS context: TLS ``min_version`` or later, TLS 1.2 suites from
    ``ciphers`` (default ``smtp.tls_ciphers``'s: AEAD only, no CBC). Raises ConfigError
    naming the file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion[min_version.replace(".", "_")]
    default_ciphers = SmtpConfig.model_fields["tls_ciphers"].default
    try:
        context.set_ciphers(ciphers or default_ciphers)
    except ssl.SSLError:
        message = f"OpenSSL knows no cipher in {ciphers!r}"
        raise ConfigError(message, where="smtp.tls_ciphers") from None
    # We do not ask clients for certificates (aiosmtpd warns on CERT_REQUIRED).
    context.verify_mode = ssl.CERT_NONE
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"cannot read: {exc.strerror}", file=exc.filename or cert_file, where="smtp"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"not a usable certificate/key pair ({type(exc).__name__})",
            file=cert_file,
            where="smtp.tls_cert_file",
        ) from None
    return context


class SmtpServer:
    """One listening socket serving ``GatewaySMTP`` on the running loop."""

    def __init__(
        self,
        smtp: SmtpConfig,
        processor: MessageProcessor,
        *,
        authenticator: Authenticator | None = None,
        tls_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = smtp
        self.processor = processor
        policy = RelayPolicy.from_config(smtp)
        clients = ClientLimiter(
            max_per_client=smtp.max_connections_per_client,
            rate_per_minute=smtp.connection_rate_per_client,
            exempt=policy.exempt_from_client_limits,
        )
        self.tracker = ConnectionTracker(smtp.max_connections, clients)
        self.handler = GatewayHandler(processor, smtp, policy=policy, authenticator=authenticator)
        self.tls_context = tls_context
        self.reuse_port = reuse_port
        self._auth = authenticator
        self._server: asyncio.Server | None = None
        self._abort = asyncio.Event()

    def protocol_factory(self) -> functools.partial[GatewaySMTP]:
        smtp = self.config
        return functools.partial(
            GatewaySMTP,
            self.handler,
            tracker=self.tracker,
            hostname=smtp.hostname,  # without it aiosmtpd calls getfqdn() per connection
            ident=IDENT,
            decode_data=False,
            enable_SMTPUTF8=True,
            data_size_limit=smtp.max_message_size,
            command_call_limit=command_call_limits(smtp),
            timeout=smtp.timeout,
            tls_context=self.tls_context,
            require_starttls=smtp.require_tls,
            auth_require_tls=True,
            # No users file: no mechanism at all (aiosmtpd's built-ins would always fail).
            auth_exclude_mechanism=[] if self._auth else ["PLAIN", "LOGIN"],
            loop=asyncio.get_running_loop(),
        )

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on ``smtp.listen`` (or on ``sock``, already bound)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self.protocol_factory(), sock=sock)
        else:
            host, port = parse_listen(self.config.listen)
            try:
                self._server = await loop.create_server(
                    self.protocol_factory(),
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=self.reuse_port or None,
                    backlog=min(1024, self.config.max_connections * 2),
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                    where="smtp.listen",
                ) from None
        log.info(
            "smtp_listening",
            address=self.address,
            tls=self.tls_context is not None,
            require_tls=self.config.require_tls,
            auth=self._auth is not None,
            bare_lf=self.config.bare_lf,
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )

    @property
    def address(self) -> str:
        """``host:port`` actually bound (useful with port 0)."""
        assert self._server is not None, "not started"
        name = self._server.sockets[0].getsockname()
        host = f"[{name[0]}]" if ":" in name[0] else name[0]
        return f"{host}:{name[1]}"

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    def abort_drain(self) -> None:
        """Cut a running ``aclose`` short (a second SIGTERM/SIGINT)."""
        self._abort.set()

    async def aclose(self, grace: float = 30.0) -> None:
        """Stop accepting; let sessions inside DATA finish (at most ``grace`` seconds, or
        until ``abort_drain``); close every other session with ``421 4.3.2``; then close
        the processor."""
        if self._server is not None:
            self._server.close()
        self.tracker.draining = True
        busy = 0
        for conn in list(self.tracker.live):
            if conn.in_data:
                busy += 1
            else:
                conn.close_for_shutdown()
        log.info("smtp_draining", in_data=busy, grace_s=grace)
        empty = asyncio.ensure_future(self.tracker.wait_empty())
        abort = asyncio.ensure_future(self._abort.wait())
        try:
            await asyncio.wait({empty, abort}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            empty.cancel()
            abort.cancel()
        left = list(self.tracker.live)
        if left:
            log.warning("smtp_drain_cut_short", aborted=len(left))
            for conn in left:
                transport = stream_transport(conn.transport)
                if transport is not None:
                    transport.abort()
        closer = getattr(self.processor, "aclose", None)
        if closer is not None:
            await closer()
        log.info("smtp_stopped")
