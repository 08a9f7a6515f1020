"""One SMTP session: aiosmtpd's ``SMTP`` protocol, adjusted where 1.4.6's defaults do not
suit a relay (``gateway.smtp._server`` listens and builds these):

- a connection cap: over ``max_connections`` the client gets ``421 4.7.0`` and is closed;
  so does one address over its own limits (``gateway.clientlimit``);
- HELP lists AUTH only when EHLO would offer it;
- aiosmtpd's own 552 texts are replaced by exactly ``replies.TOO_BIG``, and its
  over-long line replies by ``replies.COMMAND_TOO_LONG`` / ``replies.DATA_LINE_TOO_LONG``;
- message lines up to ``MAX_LINE_OCTETS`` (1 MiB) are accepted and relayed unchanged, as
  Postfix accepts them (aiosmtpd stops at 1,000): refusing them would bounce real mail,
  and splitting them would break DKIM signatures. A line ends at CRLF only, so a run of
  bare-LF "lines" counts as one line for that bound (``bare_lf = normalize`` included;
  with ``reject`` such a line gets the bare-LF reply, the more specific reason);
- every refused MAIL or DATA logs one line with its reply and reason;
- DATA is read in large pieces by ``gateway.smtp._data_reader`` (same outcomes as aiosmtpd's
  line-by-line loop, which held the loop for seconds on a big message);
- MAIL/RCPT addresses of the plain ``<dot-atom@domain>`` form skip the stdlib parser;
- an idle (or trickling) session is told ``421 4.4.2`` when ``smtp.timeout`` expires,
  instead of aiosmtpd's silent close;
- a client that sends more than ``RCPT_OVERSHOOT`` RCPTs past ``max_recipients`` is
  told ``421 4.5.3`` and closed (like Postfix's ``smtpd_recipient_overshoot_limit``);
- structlog context (``session_id``, ``peer``) bound per connection task;
- the idle timer restarted when DATA ends, so that processing gets a full window;
- a drain mode for shutdown: idle sessions get ``421 4.3.2`` at once, a session inside
  DATA gets its reply first and then ``421 4.3.2``;
- XFORWARD (``gateway.deliver._xforward``) for peers in ``xforward_networks`` only: advertised in
  their EHLO (handler.py), reset with every transaction; for anyone else the verb does not
  exist (aiosmtpd's own "not recognized", also absent from HELP).
"""

from __future__ import annotations

import asyncio
import collections
import re
import secrets
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import MISSING, SMTP, syntax

from gateway import replies
from gateway.clientlimit import ClientLimiter, LimitReason
from gateway.deliver import XForwardError, XForwardState
from gateway.logsetup import get_logger
from gateway.transports import stream_transport

from ._data_reader import DataOutcome, DataResult, read_data
from ._handler import RCPT_OVERSHOOT, GatewayEnvelope, GatewayHandler
from ._policy import RelayPolicy, parse_peer_ip

__all__ = ["MAX_LINE_OCTETS", "ConnectionTracker", "GatewaySMTP"]

MAX_LINE_OCTETS = 1 << 20
# How long a session we close on our own, with pipelined input still unread, goes on
# reading (and dropping) that input first: see GatewaySMTP._close_lingering.
LINGER_SECONDS = 2.0
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


class ConnectionTracker:
    """Live connections of one listener, the cap, the per-client limits (``clients``;
    None: none) and the drain flag."""

    def __init__(self, max_connections: int, clients: ClientLimiter | None = None) -> None:
        self.max_connections = max_connections
        self.clients = clients
        self.live: set[GatewaySMTP] = set()
        self.draining = False
        self.refused = 0
        self.accepted = 0  # connections taken into ``live`` since start
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, conn: GatewaySMTP) -> None:
        self.accepted += 1
        self.live.add(conn)
        self._empty.clear()

    def discard(self, conn: GatewaySMTP) -> None:
        self.live.discard(conn)
        if not self.live:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()


# Log fields bound per connection (and per message: handler.py binds queue_id).
SESSION_FIELDS = ("session_id", "peer", "queue_id")


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP protocol with the adjustments listed in the module docstring."""

    # The stream reader's limit (aiosmtpd builds the reader with it): the longest DATA
    # line, and the longest command line read (aiosmtpd then refuses a command over its
    # own 512-octet budget).
    line_length_limit = MAX_LINE_OCTETS

    def __init__(
        self, handler: GatewayHandler, *, tracker: ConnectionTracker, **kwargs: Any
    ) -> None:
        # Before aiosmtpd's __init__: its state resets call _set_post_data_state.
        self.policy: RelayPolicy = handler.policy
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
        self.lingering = False
        self.client_counted = False

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

    def _syntax_available(self, method: Any) -> bool:
        # HELP lists what EHLO offers: AUTH only with a mechanism, and (auth_require_tls)
        # only once TLS is up; aiosmtpd's HELP listed it always.
        offered = bool(self._auth_methods) and (
            not self._auth_require_tls or self._tls_protocol is not None
        )
        if getattr(method, "__name__", "") == "smtp_AUTH" and not offered:
            return False
        return bool(super()._syntax_available(method))

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:  # the TLS layer after STARTTLS
            super().connection_made(transport)
            return
        tracker = self.tracker
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        ip = parse_peer_ip(host)
        self.peer_ip = str(ip) if ip is not None else str(host or "")
        reply: replies.Reply | None = None
        limit: LimitReason | None = None
        if tracker.draining:
            reply = replies.SHUTTING_DOWN
        elif len(tracker.live) >= tracker.max_connections:
            reply = replies.TOO_MANY_CONNECTIONS
        elif tracker.clients is not None:
            limit = tracker.clients.admit(self.peer_ip)
            if limit is not None:
                reply = replies.CLIENT_CONNECTION_LIMIT
        if reply is not None:
            self.refused = True
            tracker.refused += 1
            writer = stream_transport(transport)
            assert writer is not None
            writer.write(f"{reply}\r\n".encode("ascii"))
            writer.close()
            log.warning(
                "connection_refused",
                reply=reply.enhanced,
                reason=limit.value if limit is not None else reply.text,
                peer=self.peer_ip,
                live=len(tracker.live),
            )
            return
        self.client_counted = tracker.clients is not None
        tracker.add(self)
        self.xforward_allowed = self.policy.may_xforward(ip)
        if not self.xforward_allowed:
            # XFORWARD rewrites our audit trail: to anyone else the verb does not exist.
            self._smtp_methods.pop("XFORWARD", None)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            # aiosmtpd never saw this connection: no session, no task to cancel.
            return
        self.tracker.discard(self)
        if self.client_counted and self.tracker.clients is not None:
            self.client_counted = False
            self.tracker.clients.release(self.peer_ip)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # the session has ended; see _close_lingering
            return
        super().data_received(data)

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
        # What the process bound (``worker``) stays: each line says which worker wrote it.
        structlog.contextvars.unbind_contextvars(*SESSION_FIELDS)
        structlog.contextvars.bind_contextvars(session_id=secrets.token_hex(4), peer=self.peer_ip)
        log.debug("session_start")
        try:
            await super()._handle_client()
        finally:
            log.debug("session_end")

    async def push(self, status: AnyStr) -> None:
        raw = status.encode("utf-8") if isinstance(status, str) else status
        if raw.startswith(_AIOSMTPD_552):
            # MAIL ... SIZE= over max_message_size (DATA's own is _refuse_data's).
            log.info("sender_refused", reply=replies.TOO_BIG.enhanced, reason="SIZE too big")
            await super().push(str(replies.TOO_BIG))
        elif raw.startswith(_AIOSMTPD_LONG):
            await super().push(str(replies.COMMAND_TOO_LONG))
        else:
            await super().push(status)

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.2.2: 421 before closing, so the client knows to retry later
        # (aiosmtpd just closes); a slowloris DATA ends here too.
        transport = stream_transport(self.transport)
        if transport is not None and not transport.is_closing() and not self.lingering:
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
        Over ``_handler.RCPT_OVERSHOOT`` the connection is closed after the reply."""
        self.rcpt_overshoot += 1
        return self.rcpt_overshoot

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str) -> None:
        await super().smtp_RCPT(arg)
        if self.rcpt_overshoot > RCPT_OVERSHOOT:
            await self._close_lingering()

    async def _close_lingering(self) -> None:
        """Close after the replies written so far, reading and dropping the client's input
        meanwhile (a lingering close, as web servers do).

        Closing a TCP socket whose input is unread makes the kernel send a reset at once,
        and throw away what it had not yet sent: a pipelining client lost the last replies,
        the 421 among them. So: FIN after our replies, then drop input until the client
        closes (aiosmtpd's eof_received cancels this) or ``LINGER_SECONDS`` pass."""
        transport = stream_transport(self.transport)
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():  # TLS cannot half-close: plain close
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        transport.resume_reading()  # the reader may have paused it: input must drain
        await asyncio.sleep(LINGER_SECONDS)
        transport.close()

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
        # for its unstuff + join (0.6 s for 25 MB here): gateway.smtp._data_reader reads the
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
            await self.push(str(self._refuse_data(result)))
            self._set_post_data_state()
            return
        # decode_data is off (SmtpServer): content and original_content are the bytes.
        self.envelope.content = result.content
        self.envelope.original_content = result.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def _refuse_data(self, result: DataResult) -> replies.Reply:
        """The reply to a DATA section that was read but not taken, logged with its
        reason; a bare line end inside an over-long line is the more specific reason."""
        if result.outcome is DataOutcome.TOO_MUCH:
            log.info("message_refused", reply=replies.TOO_BIG.enhanced, reason="too big")
            return replies.TOO_BIG
        if result.bare is not None and getattr(self.event_handler, "bare_lf", "") == "reject":
            reply = replies.BARE_LF if result.bare == "LF" else replies.BARE_CR
            log.info(
                "bare_line_ending_rejected",
                reply=reply.enhanced,
                kind=result.bare,
                reason="line too long",
            )
            return reply
        reply = replies.DATA_LINE_TOO_LONG
        log.info("message_refused", reply=reply.enhanced, reason="line too long")
        return reply

    def close_for_shutdown(self) -> None:
        """Tell the client we are going away (421 4.3.2) and close."""
        transport = stream_transport(self.transport)
        if transport is None or transport.is_closing():
            return
        if not self.lingering:  # a lingering session said its goodbye, and wrote its EOF
            transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode("ascii"))
        transport.close()
