"""Handing a message to the next hop: ``smtp://host:port`` or ``maildir:///path``.

    make_delivery(config) -> Delivery        deliver(mail_from, rcpts, content) -> DeliveryResult

The reply to our client's DATA is sent only after the next hop has the message (DESIGN.md
§1), so a delivery never queues anything: it succeeds, or it tells the pipeline which
reply makes the sending MTA keep the message (4xx) or bounce it (5xx).

The next hop's replies map to ours as ``delivery_result`` describes (DESIGN.md §7).

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
import contextlib
import itertools
import os
import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from gateway import replies
from gateway.config import Config
from gateway.logsetup import get_logger

from ._pool import Connection, PoolClosedError, SmtpPool
from ._result import (
    DeliveryResult,
    describe_error,
    parse_reply,
    recipients_refused,
    sender_or_data_refused,
)
from ._smtp_client import SmtpClient
from ._smtp_data import XForwardRefused, sendmail
from ._xforward import XForward

__all__ = [
    "Delivery",
    "MaildirDelivery",
    "SmtpDelivery",
    "make_delivery",
]

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
    ) -> DeliveryResult:
        """Hand over one message; never raises for a refusal or an unreachable hop.
        ``xforward``: the client attributes to pass on where the next hop takes them.
        ``crlf_only``: the caller vouches that ``content`` has no bare CR or LF (it came
        through the SMTP front, which rejects or rewrites them), so the line endings are
        not checked again (see ``smtp_data.stuffed_pieces``)."""
        ...

    async def aclose(self) -> None: ...


def _needs_smtputf8(mail_from: str, rcpt_tos: Sequence[str]) -> bool:
    return not (mail_from.isascii() and all(r.isascii() for r in rcpt_tos))


class SmtpDelivery:
    """Relay over SMTP (``smtp_client``, pipelined where the next hop allows), through a
    pool of at most ``pool_size`` connections reused across messages (``smtp_pool``).

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
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._local_hostname = local_hostname
        self.pool = SmtpPool(
            self._client, size=pool_size, idle_timeout=idle_timeout, check_after=check_after
        )

    @property
    def description(self) -> str:
        return f"smtp://{self._host}:{self._port}"

    def _client(self) -> SmtpClient:
        # Plain SMTP: the next hop is Postfix's reinjection port on the same host or a
        # private network; smtp:// never upgrades (a self-signed certificate there
        # would otherwise fail every delivery).
        return SmtpClient(
            self._host, self._port, timeout=self._timeout, local_hostname=self._local_hostname
        )

    async def deliver(
        self,
        mail_from: str,
        rcpt_tos: Sequence[str],
        content: bytes,
        *,
        smtp_utf8: bool = False,
        xforward: XForward | None = None,
        crlf_only: bool = False,
    ) -> DeliveryResult:
        """Send one message; the whole exchange (pool wait included) is bounded by
        ``timeout``."""
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


class MaildirDelivery:
    """Write each message once into a Maildir (``tmp/`` -> fsync -> ``new/`` -> fsync
    of the directory), whatever its recipients (named in ``Delivered-To``). The three
    subdirectories are created when missing."""

    _counter = itertools.count(1)

    def __init__(self, path: Path) -> None:
        self._path = path
        self._hostname = (
            socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
        )

    @property
    def description(self) -> str:
        return f"maildir://{self._path}"

    @property
    def path(self) -> Path:
        return self._path

    def _unique(self) -> str:
        # The classic Maildir name: seconds, microseconds, pid and a counter make it
        # unique on this host; the host name makes it unique across hosts.
        now = time.time()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        return f"{seconds}.M{micros}P{os.getpid()}Q{next(self._counter)}.{self._hostname}"

    def _write(self, content: bytes) -> str:
        for sub in ("tmp", "new", "cur"):
            (self._path / sub).mkdir(parents=True, exist_ok=True)
        name = self._unique()
        tmp = self._path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, self._path / "new" / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(self._path / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return name

    async def deliver(
        self,
        mail_from: str,
        rcpt_tos: Sequence[str],
        content: bytes,
        *,
        smtp_utf8: bool = False,
        xforward: XForward | None = None,
        crlf_only: bool = False,
    ) -> DeliveryResult:
        """Store the message with the envelope on top, as Postfix's local delivery does
        (``Return-Path``, one ``Delivered-To`` per recipient: where the rules sent it);
        ``xforward`` and ``crlf_only`` have no meaning here. A failing disk is a
        temporary failure."""
        envelope = [f"Return-Path: <{mail_from}>", *(f"Delivered-To: {r}" for r in rcpt_tos)]
        # Addresses passed the front's checks (no CR/LF); the line end follows the message's.
        eol = b"\r\n" if b"\r\n" in content[:4096] or not content else b"\n"
        stamped = eol.join(line.encode("utf-8") for line in envelope) + eol + content
        try:
            name = await asyncio.to_thread(self._write, stamped)
        except OSError as exc:
            return DeliveryResult(replies.DOWNSTREAM_TEMPFAIL, error=describe_error(exc))
        reply = replies.queued(name)
        return DeliveryResult(reply, next_hop=reply, queue_id=name)

    async def aclose(self) -> None:
        """Nothing to release."""


def make_delivery(config: Config) -> Delivery:
    """The next hop named by ``downstream.url``."""
    downstream = config.downstream
    maildir = downstream.maildir_path
    if maildir is not None:
        return MaildirDelivery(maildir)
    parts = urlsplit(downstream.url)
    assert parts.hostname is not None and parts.port is not None  # validated by config
    return SmtpDelivery(
        parts.hostname,
        parts.port,
        timeout=downstream.timeout,
        local_hostname=config.smtp.hostname,
        pool_size=downstream.pool_size,
    )
