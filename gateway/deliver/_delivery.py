"""Handing a message to the next hop: ``smtp://``, ``smtps://``, ``lmtp://``,
``lmtp+unix://`` or ``maildir:///path``.

    make_delivery(config) -> Delivery        deliver(mail_from, rcpts, content) -> DeliveryResult

The reply to our client's DATA is sent only after the next hop has the message,
so a delivery never queues anything: it succeeds, or it tells the pipeline which
reply makes the sending MTA keep the message (4xx) or bounce it (5xx).

The next hop's replies map to ours as ``_result`` describes. LMTP's
replies after the dot count like RCPT refusals: all 250 -> 250; any 4xx, or some
recipients delivered and some not -> 451 (the sending MTA retries the whole message, so
the recipients that already have it get it twice); every one a 5xx -> that 5xx.

TLS and AUTH (``_security``): a next hop that cannot be used securely is a 4xx, logged
(``next_hop_tls_failed`` / ``next_hop_auth_failed``). After an AUTH refusal the next hop
is not asked again for ``AUTH_BACKOFF`` seconds: messages meanwhile get the same 4xx at
once, so a wrong password costs one log line and cannot lock the account by repetition.

XFORWARD: when the next hop offers it, each transaction starts with the message's client
attributes (``InboundMessage.next_hop_xforward``). A 4xx/5xx to XFORWARD does not cost
the message: it is logged (``xforward_refused``), an RSET clears whatever the next hop
applied of it (Postfix applies attributes one by one, so a half-forwarded identity could
otherwise stay), and the message goes on without XFORWARD on the same connection. To a
next hop that pipelines, XFORWARD goes out in the same write as MAIL FROM, so the
transaction after a refused one is already under way: that connection is aborted before
the final dot (nothing delivered) and the message goes on without XFORWARD on a fresh
one. A 421 is a closing connection like any other (see ``SmtpDelivery``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from gateway import replies
from gateway.config import Config, NextHopConfig
from gateway.logsetup import get_logger

from ._maildir import MaildirDelivery
from ._pool import Connection, PoolClosedError, SmtpPool
from ._result import (
    DeliveryResult,
    describe_error,
    parse_reply,
    recipients_refused,
    sender_or_data_refused,
)
from ._security import AuthFailed, NextHopSecurityError, Security
from ._smtp_client import SmtpClient
from ._smtp_data import XForwardRefused, sendmail
from ._xforward import XForward

__all__ = [
    "AUTH_BACKOFF",
    "Delivery",
    "SmtpDelivery",
    "make_delivery",
]

AUTH_BACKOFF = 60.0

_QUEUE_ID = re.compile(r"queued as ([A-Za-z0-9._-]+)", re.IGNORECASE)
_log = get_logger("cm-gateway.deliver._delivery")


class Delivery(Protocol):
    """A next hop."""

    @property
    def description(self) -> str:
        """For logs, e.g. ``smtp://127.0.0.1:10026``."""
        ...

    async def deliver(
        self,
        mail_from: str,
        rcpt_tos: Sequence[str],
        content: bytes,
        *,
        smtp_utf8: bool = False,
        xforward: XForward | None = None,
        crlf_only: bool = False,
        original_rcpts: Sequence[str] = (),
    ) -> DeliveryResult:
        """Hand over one message; never raises for a refusal or an unreachable hop.
        ``xforward``: the client attributes to pass on where the next hop takes them.
        ``crlf_only``: the caller vouches that ``content`` has no bare CR or LF (it came
        through the SMTP front, which rejects or rewrites them), so the line endings are
        not checked again (see ``_smtp_data.stuffed_pieces``). ``original_rcpts``: the
        recipients as the client gave them, before the rules (a Maildir records them in
        ``X-Original-To``; SMTP and LMTP pass the message's envelope only)."""
        ...

    async def aclose(self) -> None: ...


def _needs_smtputf8(mail_from: str, rcpt_tos: Sequence[str]) -> bool:
    return not (mail_from.isascii() and all(r.isascii() for r in rcpt_tos))


class SmtpDelivery:
    """Relay over SMTP (``_smtp_client``, pipelined where the next hop allows), through a
    pool of at most ``pool_size`` connections reused across messages (``_pool``).

    A message is sent again on a fresh connection only when a reused connection turns
    out stale before the next hop accepted its MAIL FROM (disconnected, 421): nothing of
    it was delivered. After MAIL FROM was accepted a failure is never retried here; the
    sending MTA gets a 4xx and retries the whole message itself.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        local_hostname: str | None = None,
        pool_size: int = 1,
        idle_timeout: float = 30.0,
        check_after: float = 5.0,
        security: Security | None = None,
        lmtp: bool = False,
        socket_path: str | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._local_hostname = local_hostname
        self.security = security or Security()
        self._lmtp = lmtp
        self._socket_path = socket_path
        self._auth_refused_until = 0.0
        self.pool = SmtpPool(
            self._client, size=pool_size, idle_timeout=idle_timeout, check_after=check_after
        )

    @property
    def description(self) -> str:
        if self._socket_path is not None:
            return f"lmtp+unix://{self._socket_path}"
        scheme = "lmtp" if self._lmtp else "smtps" if self.security.implicit else "smtp"
        return f"{scheme}://{self._host}:{self._port}"

    def _client(self) -> SmtpClient:
        return SmtpClient(
            self._host,
            self._port,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
            security=self.security,
            lmtp=self._lmtp,
            socket_path=self._socket_path,
        )

    def _refused(self, exc: NextHopSecurityError) -> DeliveryResult:
        event = "next_hop_auth_failed" if isinstance(exc, AuthFailed) else "next_hop_tls_failed"
        if isinstance(exc, AuthFailed):
            self._auth_refused_until = time.monotonic() + AUTH_BACKOFF
        _log.warning(
            event,
            next_hop=self.description,
            tls=self.security.tls,
            user=self.security.auth_user or None,
            error=str(exc),
            reply=str(exc.reply),
        )
        return DeliveryResult(exc.reply, error=f"{type(exc).__name__}: {exc}")

    async def deliver(
        self,
        mail_from: str,
        rcpt_tos: Sequence[str],
        content: bytes,
        *,
        smtp_utf8: bool = False,
        xforward: XForward | None = None,
        crlf_only: bool = False,
        original_rcpts: Sequence[str] = (),
    ) -> DeliveryResult:
        """Send one message; the whole exchange (pool wait included) is bounded by
        ``timeout``."""
        if time.monotonic() < self._auth_refused_until:
            # The next hop refused our credentials moments ago: asking again would only
            # repeat the refusal (and count towards an account lockout).
            return DeliveryResult(replies.DOWNSTREAM_AUTH_FAILED, error="AuthFailed: backing off")
        needs_utf8 = _needs_smtputf8(mail_from, rcpt_tos)
        conn: Connection | None = None
        reusable = polite = False
        try:
            async with asyncio.timeout(self._timeout):
                conn = await self.pool.acquire()
                while True:
                    try:
                        errors, message = await _send(
                            conn.client,
                            mail_from,
                            rcpt_tos,
                            content,
                            needs_utf8,
                            smtp_utf8,
                            xforward,
                            crlf_only,
                        )
                        break
                    except XForwardRefused as exc:
                        _xforward_refused(exc.response)
                        xforward = None  # so this happens once
                    except _STALE as exc:
                        if not (conn.reused and not conn.client.mail_accepted and _stale(exc)):
                            raise
                    # Nothing of the message was delivered: again, on a fresh connection.
                    stale, conn = conn, None
                    conn = await self.pool.replace(stale)
            # A refused recipient is a 5xx/4xx in this session: do not reuse it.
            reusable = not errors
            polite = True
        except NextHopSecurityError as exc:
            return self._refused(exc)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            polite = True
            return recipients_refused(exc)
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as exc:
            polite = exc.code != 421
            return sender_or_data_refused(exc.code, exc.message, type(exc).__name__)
        except aiosmtplib.SMTPNotSupported as exc:
            polite = True
            reply = replies.DOWNSTREAM_NO_SMTPUTF8 if needs_utf8 else replies.DOWNSTREAM_TEMPFAIL
            return DeliveryResult(reply, error=str(exc))
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, EHLO and the like: the next hop is unwell, not this message.
            return DeliveryResult(
                replies.DOWNSTREAM_TEMPFAIL,
                next_hop=parse_reply(exc.code, exc.message),
                error=type(exc).__name__,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError, PoolClosedError) as exc:
            return DeliveryResult(replies.DOWNSTREAM_TEMPFAIL, error=describe_error(exc))
        finally:
            if conn is not None:
                self.pool.release(conn, reusable=reusable, polite=polite)
        next_hop = parse_reply(250, message)  # sendmail raises for anything but 250
        refused = {r: parse_reply(resp.code, resp.message) for r, resp in errors.items()}
        queue_id = m.group(1) if (m := _QUEUE_ID.search(message)) else None
        if refused:
            return DeliveryResult(
                replies.DOWNSTREAM_PARTIAL, next_hop=next_hop, refused=refused, queue_id=queue_id
            )
        return DeliveryResult(next_hop, next_hop=next_hop, queue_id=queue_id)

    async def aclose(self) -> None:
        """QUIT the pooled connections."""
        await self.pool.aclose()


# What a stale pooled connection raises before MAIL FROM is accepted.
_STALE = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPResponseException, OSError)


def _stale(exc: BaseException) -> bool:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421  # "closing transmission channel"; any other code is an answer
    return not isinstance(exc, TimeoutError)  # a slow hop is not a dead connection


async def _send(
    client: SmtpClient,
    mail_from: str,
    rcpt_tos: Sequence[str],
    content: bytes,
    needs_utf8: bool,
    smtp_utf8: bool,
    xforward: XForward | None,
    crlf_only: bool,
) -> tuple[dict[str, SMTPResponse], str]:
    pipelined: list[bytes] = []
    if xforward is not None and client.pipelining:
        pipelined = client.xforward_lines(xforward)  # sendmail raises XForwardRefused
    elif xforward is not None and (refusal := await client.xforward(xforward)) is not None:
        _xforward_refused(refusal)
        await client.rset()
    options = []
    if client.supports("8bitmime"):
        options.append("BODY=8BITMIME")
    if needs_utf8 or (smtp_utf8 and client.supports("smtputf8")):
        # smtp_data.sendmail raises SMTPNotSupported when the server lacks it.
        options.append("SMTPUTF8")
    return await sendmail(
        client, mail_from, rcpt_tos, content, options, pipelined, crlf_only=crlf_only
    )


def _xforward_refused(refusal: SMTPResponse) -> None:
    reply = parse_reply(refusal.code, refusal.message)
    _log.warning("xforward_refused", next_hop_reply=f"{reply.code} {reply.enhanced}")


def make_delivery(config: Config, hop: NextHopConfig | None = None) -> Delivery:
    """The next hop ``hop`` describes (default: ``[downstream]``)."""
    hop = config.downstream if hop is None else hop
    maildir = hop.maildir_path
    if maildir is not None:
        return MaildirDelivery(maildir)
    parts = urlsplit(hop.url)
    scheme = parts.scheme
    security = Security(
        tls=hop.tls,
        implicit=scheme == "smtps",
        ca_file=hop.tls_ca_file,
        auth_user=hop.auth_user,
        auth_password_env=hop.auth_password_env,
    )
    if scheme == "lmtp+unix":
        host, port, socket_path = "localhost", 0, parts.path
    else:
        assert parts.hostname is not None and parts.port is not None  # validated by config
        host, port, socket_path = parts.hostname, parts.port, None
    return SmtpDelivery(
        host,
        port,
        timeout=hop.timeout,
        local_hostname=config.smtp.hostname,
        pool_size=hop.pool_size,
        security=security,
        lmtp=scheme.startswith("lmtp"),
        socket_path=socket_path,
    )
