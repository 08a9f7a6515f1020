"""The SMTP listener: aiosmtpd's ``SMTP`` protocol on the service's own event loop.

    server = SmtpServer(config.smtp, processor, authenticator=..., tls_context=...)
    await server.start()                 # loop.create_server(...)
    ...
    await server.aclose(grace=30.0)      # stop accepting, let DATA finish, close the rest

``GatewaySMTP`` adjusts aiosmtpd 1.4.6 where its defaults do not suit a relay:

- a connection cap: over ``max_connections`` the client gets ``421 4.7.0`` and is closed;
- aiosmtpd's own 552 texts are replaced by exactly ``replies.TOO_BIG``, and its
  over-long line replies by ``replies.COMMAND_TOO_LONG`` / ``replies.DATA_LINE_TOO_LONG``;
- message lines up to ``MAX_LINE_OCTETS`` (1 MiB) are accepted and relayed unchanged, as
  Postfix accepts them (aiosmtpd stops at 1,000): refusing them would bounce real mail,
  and splitting them would break DKIM signatures. A line ends at CRLF only, so a run of
  bare-LF "lines" counts as one line for that bound (``bare_lf = normalize`` included);
- DATA is read in large pieces by ``gateway.data_reader`` (same outcomes as aiosmtpd's
  line-by-line loop, which held the loop for seconds on a big message);
- an idle (or trickling) session is told ``421 4.4.2`` when ``smtp.timeout`` expires,
  instead of aiosmtpd's silent close;
- a client that sends more than ``RCPT_OVERSHOOT`` RCPTs past ``max_recipients`` is
  told ``421 4.5.3`` and closed (like Postfix's ``smtpd_recipient_overshoot_limit``);
- structlog context (``session_id``, ``peer``) bound per connection task;
- the idle timer restarted when DATA ends, so that processing gets a full window;
- a drain mode for shutdown: idle sessions get ``421 4.3.2`` at once, a session inside
  DATA gets its reply first and then ``421 4.3.2``;
- XFORWARD (``gateway.xforward``) for peers in ``xforward_networks`` only: advertised in
  their EHLO (handler.py), reset with every transaction; for anyone else the verb does not
  exist (aiosmtpd's own "not recognized", also absent from HELP).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import secrets
import socket
import ssl
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import MISSING, SMTP, syntax

from . import replies
from .auth import Authenticator
from .config import SmtpConfig, parse_listen
from .data_reader import DataOutcome, read_data
from .errors import ConfigError
from .handler import RCPT_OVERSHOOT, GatewayEnvelope, GatewayHandler
from .inbound import MessageProcessor
from .logsetup import get_logger
from .policy import RelayPolicy, parse_peer_ip
from .transports import stream_transport
from .xforward import XForwardError, XForwardState

__all__ = [
    "IDENT",
    "MAX_LINE_OCTETS",
    "ConnectionTracker",
    "GatewaySMTP",
    "SmtpServer",
    "build_tls_context",
    "command_call_limits",
]

IDENT = "cm-gateway ESMTP"
MAX_LINE_OCTETS = 1 << 20
log = get_logger("cm-gateway.smtp")

# aiosmtpd writes this text with 552 (MAIL ... SIZE=); our contract says replies.TOO_BIG.
# (DATA is ours, see _data: it writes replies.TOO_BIG / DATA_LINE_TOO_LONG itself.)
_AIOSMTPD_552 = b"552 Error: message size exceeds"
# An address aiosmtpd's stdlib header parser would return unchanged: a dot-atom local
# part and a plain dot-separated domain, in angle brackets. That parser costs about a
# tenth of the gateway's CPU per message; anything else (quoted local parts, domain
# literals, comments, source routes, <>) still goes through it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>", re.ASCII
)
# aiosmtpd's over-long command reply carries no enhanced code; ours is in replies.py.
_AIOSMTPD_LONG = b"500 Command line too long"


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


def build_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server-side STARTTLS context (TLS 1.2+). Raises ConfigError naming the file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
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


class ConnectionTracker:
    """Live connections of one listener, the cap, and the drain flag."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.live: set[GatewaySMTP] = set()
        self.draining = False
        self.refused = 0
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, conn: GatewaySMTP) -> None:
        self.live.add(conn)
        self._empty.clear()

    def discard(self, conn: GatewaySMTP) -> None:
        self.live.discard(conn)
        if not self.live:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP protocol with the adjustments listed in the module docstring."""

    # The stream reader's limit (aiosmtpd builds the reader with it): the longest DATA
    # line, and the longest command line read (aiosmtpd then refuses a command over its
    # own 512-octet budget).
    line_length_limit = MAX_LINE_OCTETS

    def __init__(self, handler: Any, *, tracker: ConnectionTracker, **kwargs: Any) -> None:
        # Before aiosmtpd's __init__: its state resets call _set_post_data_state.
        self.xforward = XForwardState()
        self.xforward_allowed = False
        super().__init__(handler, **kwargs)
        # aiosmtpd keeps the per-verb command budgets in one dict shared by every
        # connection (a class attribute) and raises MAIL's by 36 octets on every EHLO:
        # one session's EHLOs would lift it for all. Ours is per connection, and reset
        # on each EHLO (smtp_EHLO below).
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.tracker = tracker
        self.refused = False
        self.in_data = False
        self.peer_ip = ""
        self.rcpt_overshoot = 0

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self.command_size_limits.pop("MAIL", None)
        await super().smtp_EHLO(hostname)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.match(arg)
        # The stdlib parser also eats the whitespace (and comments) after ">".
        rest = arg[match.end() :].lstrip(" \t") if match is not None else ""
        if match is None or rest.startswith("(") or "\r" in rest or "\n" in rest:
            try:
                return super()._getaddr(arg)
            except Exception:
                # The stdlib parser crashes on some garbage ("<" alone: IndexError;
                # "a@[": AttributeError). Client input it cannot read is a malformed
                # address (553 5.1.3), not an internal error (451).
                return None, None
        address = match.group(1)
        local = address.rpartition("@")[0]
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None, None
        return address, rest

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:  # the TLS layer after STARTTLS
            super().connection_made(transport)
            return
        tracker = self.tracker
        if tracker.draining or len(tracker.live) >= tracker.max_connections:
            self.refused = True
            tracker.refused += 1
            reply = replies.SHUTTING_DOWN if tracker.draining else replies.TOO_MANY_CONNECTIONS
            writer = stream_transport(transport)
            assert writer is not None
            writer.write(f"{reply}\r\n".encode("ascii"))
            writer.close()
            log.warning("connection_refused", reply=reply.enhanced, live=len(tracker.live))
            return
        tracker.add(self)
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        ip = parse_peer_ip(host)
        self.peer_ip = str(ip) if ip is not None else str(host or "")
        policy: RelayPolicy | None = getattr(self.event_handler, "policy", None)
        self.xforward_allowed = policy is not None and policy.may_xforward(ip)
        if not self.xforward_allowed:
            # XFORWARD rewrites our audit trail: to anyone else the verb does not exist.
            self._smtp_methods.pop("XFORWARD", None)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            # aiosmtpd never saw this connection: no session, no task to cancel.
            return
        self.tracker.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self.refused:
            return False
        super().eof_received()  # cancels the session's task: nothing more is answered
        # So close our side too (False). aiosmtpd keeps the connection half-open and
        # leaves the close to that task; under uvloop a client that hangs up at once
        # can cancel it before it ever runs, and the connection (and its slot under
        # max_connections) then stayed open for good.
        return False

    async def _handle_client(self) -> None:
        # This coroutine is the connection's own task (created in connection_made), so
        # context bound here is seen by every hook of this connection and no other.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(session_id=secrets.token_hex(4), peer=self.peer_ip)
        log.debug("session_start")
        try:
            await super()._handle_client()
        finally:
            log.debug("session_end")

    async def push(self, status: AnyStr) -> None:
        raw = status.encode("utf-8") if isinstance(status, str) else status
        if raw.startswith(_AIOSMTPD_552):
            await super().push(str(replies.TOO_BIG))
        elif raw.startswith(_AIOSMTPD_LONG):
            await super().push(str(replies.COMMAND_TOO_LONG))
        else:
            await super().push(status)

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.2.2: 421 before closing, so the client knows to retry later
        # (aiosmtpd just closes); a slowloris DATA ends here too.
        transport = stream_transport(self.transport)
        if transport is not None and not transport.is_closing():
            log.info("session_timeout", in_data=self.in_data)
            transport.write(f"{replies.IDLE_TIMEOUT}\r\n".encode("ascii"))
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _set_post_data_state(self) -> None:
        # aiosmtpd calls this at the end of DATA and from its RSET/HELO/EHLO reset:
        # exactly where Postfix's smtpd forgets XFORWARD attributes (mail_reset).
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self.xforward.reset()

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str | None) -> None:
        if not self.xforward_allowed:  # defensive: the verb was removed at connect
            await self.push(str(replies.XFORWARD_NOT_PERMITTED))
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push(str(replies.XFORWARD_IN_TRANSACTION))
            return
        try:
            self.xforward.update(arg)
        except XForwardError as exc:
            log.info("xforward_command_refused", reply=exc.reply.enhanced, reason=exc.reply.text)
            await self.push(str(exc.reply))
            return
        await self.push(str(replies.OK))

    def note_rcpt_overshoot(self) -> int:
        """Count one RCPT refused for too many recipients; the session's total so far.
        Over ``handler.RCPT_OVERSHOOT`` the connection is closed after the reply."""
        self.rcpt_overshoot += 1
        return self.rcpt_overshoot

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str) -> None:
        await super().smtp_RCPT(arg)
        if self.rcpt_overshoot > RCPT_OVERSHOOT and self.transport is not None:
            self.transport.close()

    def restart_idle_timer(self) -> None:
        """Give the rest of this DATA phase a full ``timeout`` (see handler.py)."""
        self._reset_timeout()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await self._data(arg)
        finally:
            self.in_data = False
        if self.tracker.draining:
            self.close_for_shutdown()

    async def _data(self, arg: str) -> None:
        # aiosmtpd's own DATA reads line by line and, for a big message, holds the loop
        # for its unstuff + join (0.6 s for 25 MB here): gateway.data_reader reads the
        # section in large pieces with the same outcomes. Its checks and replies before
        # the 354 and after the terminator are aiosmtpd's (same texts, same order).
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            result = await read_data(
                self._reader, line_limit=self.line_length_limit, max_size=self.data_size_limit
            )
        except asyncio.CancelledError:
            self._writer.close()  # the connection went away during DATA
            raise
        if result.outcome is not DataOutcome.NOMINAL:
            too_long = result.outcome is DataOutcome.TOO_LONG
            await self.push(str(replies.DATA_LINE_TOO_LONG if too_long else replies.TOO_BIG))
            self._set_post_data_state()
            return
        # decode_data is off (SmtpServer): content and original_content are the bytes.
        self.envelope.content = result.content
        self.envelope.original_content = result.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def close_for_shutdown(self) -> None:
        """Tell the client we are going away (421 4.3.2) and close."""
        transport = stream_transport(self.transport)
        if transport is None or transport.is_closing():
            return
        transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode("ascii"))
        transport.close()


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
        self.tracker = ConnectionTracker(smtp.max_connections)
        self.handler = GatewayHandler(
            processor, smtp, policy=RelayPolicy.from_config(smtp), authenticator=authenticator
        )
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
