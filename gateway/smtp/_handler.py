"""The aiosmtpd handler: envelope policy, AUTH, and the hand-off of each message.

aiosmtpd finds hooks by name (``handle_<VERB>``, ``auth_<MECHANISM>``), so no other
attribute of ``GatewayHandler`` may start with ``handle_`` or ``auth_``.

Bare line endings (``[smtp] bare_lf``). aiosmtpd 1.4.6 ends DATA only on
CRLF.CRLF and splits lines on CRLF, so a lone LF or CR is ordinary data to it, and a dot
after one keeps its stuffing dot (aiosmtpd issue #561). ``reject`` answers 550 5.6.11.
``normalize`` treats every lone LF or CR as a line end, as a sender using them meant,
rewrites it to CRLF and removes the stuffing dot aiosmtpd left on each line that starts
after one: ``a\\n..b`` becomes ``a\\r\\n.b``; a lone ``.`` line after a bare LF (the
smuggling pattern ``\\n.\\n``) becomes an empty line, never an end of data.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import traceback
from base64 import b64decode
from typing import Any, Protocol

import structlog
from aiosmtpd.smtp import SMTP as _SMTP
from aiosmtpd.smtp import AuthResult, Envelope, Session, TLSSetupException

from gateway import replies
from gateway.config import SmtpConfig
from gateway.controls import replace_controls
from gateway.deliver import EHLO_KEYWORD, XForwardState
from gateway.logsetup import get_logger
from gateway.mail import normalize_line_endings, scan_bare_line_ending
from gateway.pipeline import InboundMessage, MessageProcessor
from gateway.redact import scrub
from gateway.replies import Reply

from ._auth import Authenticator
from ._policy import RelayPolicy, parse_peer_ip

__all__ = [
    "RCPT_OVERSHOOT",
    "GatewayEnvelope",
    "GatewayHandler",
    "new_queue_id",
    "processing_deadline",
]

log = get_logger("cm-gateway.smtp")

# RCPTs refused with 452 4.5.3 in one session before it is closed with 421 4.5.3. A
# client that waits for each reply (we do not offer PIPELINING) stops at the first 452.
RCPT_OVERSHOOT = 100
# handled=False: aiosmtpd answers "535 5.7.8 Authentication credentials invalid".
_INVALID = AuthResult(success=False, handled=False)


def new_queue_id() -> str:
    """A short unique id for one transaction, like Postfix's (12 upper-case hex digits)."""
    return secrets.token_hex(6).upper()


def processing_deadline(smtp_timeout: float) -> float:
    """How long ``process()`` may run: aiosmtpd drops the client at ``smtp_timeout``, and
    we must have answered before that (a client that saw no reply retries, and the mail
    may be delivered twice)."""
    return max(smtp_timeout - 5.0, smtp_timeout * 0.8)


def _one_line(reply: Reply) -> str:
    return replace_controls(str(reply), c0_only=True)


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


class SessionHooks(Protocol):
    """What the handler needs of the SMTP session beyond aiosmtpd's (``_session``
    implements it): whether this client may XFORWARD and what it forwarded, the count of
    recipients refused over the limit, and the idle timer to restart for processing."""

    xforward_allowed: bool
    xforward: XForwardState

    def note_rcpt_overshoot(self) -> int: ...

    def restart_idle_timer(self) -> None: ...


class GatewayEnvelope(Envelope):
    """aiosmtpd's envelope plus the queue id given at MAIL FROM."""

    def __init__(self) -> None:
        super().__init__()
        self.queue_id = ""


class GatewayHandler:
    """Policy at MAIL/RCPT, AUTH against the users file, and DATA -> processor."""

    def __init__(
        self,
        processor: MessageProcessor,
        smtp: SmtpConfig,
        *,
        policy: RelayPolicy | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.processor = processor
        self.policy = policy or RelayPolicy.from_config(smtp)
        self.authenticator = authenticator
        self.bare_lf = smtp.bare_lf
        self.deadline = processing_deadline(smtp.timeout)

    # -- ESMTP ------------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SessionHooks,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # With no mechanism left (no users file) aiosmtpd would still print "AUTH ".
        kept = [r for r in responses if r.strip() not in ("250-AUTH", "250 AUTH")]
        if server.xforward_allowed:
            # server.py decides (xforward_networks); the last line stays "250 HELP".
            kept.insert(len(kept) - 1, f"250-{EHLO_KEYWORD}")
        return kept

    async def handle_MAIL(
        self,
        server: _SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        structlog.contextvars.unbind_contextvars("queue_id")
        smtputf8 = "SMTPUTF8" in mail_options
        refusal = None
        if not _encodable(address):
            refusal = replies.BAD_SENDER_SYNTAX
        elif not smtputf8 and not address.isascii():
            refusal = replies.SMTPUTF8_REQUIRED
        if refusal is not None:
            log.info("sender_refused", reply=refusal.enhanced, reason=refusal.text)
            return str(refusal)
        queue_id = new_queue_id()
        structlog.contextvars.bind_contextvars(queue_id=queue_id)
        if isinstance(envelope, GatewayEnvelope):
            envelope.queue_id = queue_id
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RSET(self, server: _SMTP, session: Session, envelope: Envelope) -> str:
        structlog.contextvars.unbind_contextvars("queue_id")
        return "250 2.0.0 Ok"

    async def handle_RCPT(
        self,
        server: SessionHooks,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not _encodable(address):
            return str(replies.BAD_RECIPIENT_SYNTAX)
        if not envelope.smtp_utf8 and not address.isascii():
            return str(replies.SMTPUTF8_REQUIRED)
        ip = parse_peer_ip(_peer_host(session))
        relay_allowed = bool(session.authenticated) or self.policy.peer_may_relay(ip)
        refusal = self.policy.check_recipient(
            address, relay_allowed=relay_allowed, accepted=len(envelope.rcpt_tos)
        )
        if refusal is replies.TOO_MANY_RECIPIENTS:
            return str(self._overshoot(server))
        if refusal is not None:
            log.info(
                "recipient_refused",
                reply=refusal.enhanced,
                domain=address.rpartition("@")[2].lower()[:255],
            )
            return str(refusal)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    @staticmethod
    def _overshoot(server: SessionHooks) -> Reply:
        # One log line per session, not one per excess RCPT (10,000 RCPTs would be a
        # log flood); past the allowance the session is closed (see server.py).
        count = server.note_rcpt_overshoot()
        if count == 1:
            log.info("recipient_refused", reply=replies.TOO_MANY_RECIPIENTS.enhanced)
        if count > RCPT_OVERSHOOT:
            log.warning("recipient_overshoot", refused=count)
            return replies.TOO_MANY_RECIPIENTS_CLOSING
        return replies.TOO_MANY_RECIPIENTS

    # -- DATA -------------------------------------------------------------------------

    async def handle_DATA(self, server: SessionHooks, session: Session, envelope: Envelope) -> str:
        started = time.monotonic()
        # The idle timer last started at the DATA command; give processing a full window
        # of its own rather than what the upload left over.
        server.restart_idle_timer()
        content: bytes = envelope.original_content or b""
        queue_id = getattr(envelope, "queue_id", "") or new_queue_id()
        bare = await scan_bare_line_ending(content)
        if bare is not None:
            if self.bare_lf == "reject":
                reply = replies.BARE_LF if bare == "LF" else replies.BARE_CR
                log.info("bare_line_ending_rejected", kind=bare, size=len(content))
                return str(reply)
            content = normalize_line_endings(content)
            log.info("bare_line_ending_normalized", kind=bare)
        ip = parse_peer_ip(_peer_host(session))
        msg = InboundMessage(
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=content,
            peer_ip=str(ip) if ip is not None else (_peer_host(session) or ""),
            helo=session.host_name or "",
            smtp_utf8=bool(envelope.smtp_utf8),
            mail_options=tuple(envelope.mail_options),
            tls=session.ssl is not None,
            authenticated_user=(
                session.auth_data
                if session.authenticated and isinstance(session.auth_data, str)
                else None
            ),
            trusted_peer=self.policy.is_trusted(ip),
            queue_id=queue_id,
            received_at=time.time(),
            forwarded=server.xforward.current,
            peer_port=_peer_port(session),
            esmtp=bool(session.extended_smtp),
        )
        reply = await self._process(msg)
        # Debug: the pipeline's info line ("message", msglog) already carries the reply,
        # size and time of every message it answers, and an error or timeout has its own
        # warning/error line; a second info line per message cost ~4% of the CPU.
        log.debug(
            "message_done",
            size=len(content),
            recipients=len(msg.rcpt_tos),
            reply=f"{reply.code} {reply.enhanced}",
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return _one_line(reply)

    async def _process(self, msg: InboundMessage) -> Reply:
        timer = asyncio.timeout(self.deadline)
        try:
            async with timer:
                reply = await self.processor.process(msg)
        except TimeoutError as exc:
            if timer.expired():
                log.warning("processing_timeout", deadline_s=self.deadline)
                return replies.PROCESSING_TIMEOUT
            self._log_error(exc, "processor_error")
            return replies.INTERNAL_ERROR
        except Exception as exc:
            self._log_error(exc, "processor_error")
            return replies.INTERNAL_ERROR
        if not isinstance(reply, Reply) or not 200 <= reply.code < 600:
            log.error("processor_bad_reply", reply_type=type(reply).__name__)
            return replies.INTERNAL_ERROR
        return reply

    # -- errors -----------------------------------------------------------------------

    async def handle_exception(self, error: Exception) -> str:
        """Anything a hook raised: 451, never aiosmtpd's default 500 with the text."""
        if isinstance(error, TLSSetupException):
            # A client that cannot do our TLS; aiosmtpd closes the connection itself.
            log.info("tls_handshake_failed", cause=type(error.__cause__).__name__)
        else:
            self._log_error(error, "smtp_session_error")
        return str(replies.INTERNAL_ERROR)

    @staticmethod
    def _log_error(error: BaseException, event: str) -> None:
        # The type and place only: an exception's text may quote mail content or, in a
        # badly written library, a credential.
        log.error(event, error_type=type(error).__name__, where=scrub(_where(error)))

    # -- AUTH (only offered over TLS; see server.py) ------------------------------------

    async def auth_PLAIN(self, server: _SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = _bytes_or_none(await server.challenge_auth(""))
        else:
            blob = await _b64_arg(server, args[1])
        if blob is None:  # the client aborted or sent junk; already answered
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split auth value")
            return AuthResult(success=False, handled=True)
        authz, login, password = parts
        # We do not support acting for someone else (RFC 4616 authorization identity).
        if authz and authz != login:
            return _INVALID
        return await self._verify("PLAIN", login, password)

    async def auth_LOGIN(self, server: _SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = _bytes_or_none(await server.challenge_auth(server.AuthLoginUsernameChallenge))
        else:
            login = await _b64_arg(server, args[1])
        if login is None:
            return AuthResult(success=False, handled=True)
        password = _bytes_or_none(await server.challenge_auth(server.AuthLoginPasswordChallenge))
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._verify("LOGIN", login, password)

    async def _verify(self, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        if self.authenticator is None:
            return _INVALID
        try:
            user = login.decode("utf-8")
        except UnicodeDecodeError:
            return _INVALID
        if await self.authenticator.verify(user, password):
            log.info("auth_ok", mechanism=mechanism, user=user)
            return AuthResult(success=True, auth_data=user)
        log.warning("auth_failed", mechanism=mechanism)
        return _INVALID


def _bytes_or_none(value: object) -> bytes | None:
    return value if isinstance(value, bytes) else None


async def _b64_arg(server: _SMTP, arg: str) -> bytes | None:
    try:
        return b64decode(arg.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        await server.push("501 5.5.2 Cannot decode base64")
        return None


def _encodable(address: str) -> bool:
    # aiosmtpd decodes arguments with surrogateescape: invalid UTF-8 leaves lone
    # surrogates that would blow up later when the address is encoded again.
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _peer_port(session: Session) -> int | None:
    peer: Any = session.peer
    if isinstance(peer, tuple) and len(peer) > 1 and isinstance(peer[1], int):
        return peer[1]
    return None


def _peer_host(session: Session) -> str | None:
    peer: Any = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None
