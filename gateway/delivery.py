"""Handing a message to the next hop: ``smtp://host:port`` or ``maildir:///path``.

    make_delivery(config) -> Delivery        deliver(mail_from, rcpts, content) -> DeliveryResult

The reply to our client's DATA is sent only after the next hop has the message (DESIGN.md
§1), so a delivery never queues anything: it succeeds, or it tells the pipeline which
reply makes the sending MTA keep the message (4xx) or bounce it (5xx).

SMTP result mapping (DESIGN.md §7):

- every recipient accepted and DATA accepted -> 250, with the next hop's own reply kept
  for the log (and its queue id, if it said ``queued as <id>``);
- some recipients refused -> ``DOWNSTREAM_PARTIAL`` (451). One reply to DATA covers all
  recipients: a 250 would silently lose the refused ones and a 5xx would bounce the
  accepted ones, who already have it. With a 4xx the sending MTA retries the whole
  message; the accepted recipients may then receive it twice, which is the lesser harm;
- every recipient refused with 5xx, sender refused with 5xx, DATA refused with 5xx ->
  that 5xx (code and enhanced code from the next hop's text);
- any 4xx, a mix of 4xx and 5xx refusals, connection refused, timeout, disconnect, an
  error in the greeting or EHLO -> ``DOWNSTREAM_TEMPFAIL`` (451).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiosmtplib

from . import replies
from .config import Config
from .replies import Reply

__all__ = [
    "Delivery",
    "DeliveryResult",
    "MaildirDelivery",
    "SmtpDelivery",
    "make_delivery",
    "parse_reply",
]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_QUEUE_ID = re.compile(r"queued as ([A-Za-z0-9._-]+)", re.IGNORECASE)
_QUIT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What happened at the next hop.

    ``reply`` is what our client should hear (for a success the pipeline answers with its
    own queue id instead); ``next_hop`` is the next hop's own reply to DATA, or the
    refusal that decided ``reply`` (None when it was never reached); ``refused`` lists
    per-recipient refusals; ``queue_id`` is the next hop's id when it said one.
    """

    reply: Reply
    next_hop: Reply | None = None
    refused: Mapping[str, Reply] = field(default_factory=dict)
    queue_id: str | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return 200 <= self.reply.code < 300


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
    ) -> DeliveryResult:
        """Hand over one message; never raises for a refusal or an unreachable hop."""
        ...

    async def aclose(self) -> None: ...


def _one_line(text: str) -> str:
    # The next hop's text goes back to our client: no line breaks may survive, or it
    # could end our reply early and inject a second one.
    cleaned = " ".join("".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).split())
    return cleaned[:400]


def parse_reply(code: int, message: str) -> Reply:
    """An SMTP reply from its code and text, the enhanced code taken from the text when
    it has one of the same class (``550``, ``"5.1.1 no such user"``)."""
    text = _one_line(message)
    match = _ENHANCED.match(text)
    klass = code // 100
    if match and int(match.group(1)) == klass:
        enhanced = ".".join(match.group(1, 2, 3))
        text = text[match.end() :]
    else:
        enhanced = f"{klass}.0.0" if klass in (2, 4, 5) else "4.0.0"
    return Reply(code, enhanced, text or "(no text)")


def _needs_smtputf8(mail_from: str, rcpt_tos: Sequence[str]) -> bool:
    return not (mail_from.isascii() and all(r.isascii() for r in rcpt_tos))


class SmtpDelivery:
    """Relay over SMTP with aiosmtplib: one connection per message.

    ``_acquire``/``_release`` are the seam where a connection pool fits (issue 5): they
    are the only places that create or end a connection, and ``_release`` is told
    whether the connection is still fit for another message.
    """

    def __init__(
        self, host: str, port: int, *, timeout: float, local_hostname: str | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._local_hostname = local_hostname

    @property
    def description(self) -> str:
        return f"smtp://{self._host}:{self._port}"

    def _acquire(self) -> aiosmtplib.SMTP:
        # Plain SMTP: the next hop is Postfix's reinjection port on the same host or a
        # private network; smtp:// never upgrades (a self-signed certificate there
        # would otherwise fail every delivery).
        return aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
            start_tls=False,
        )

    async def _ready(self, client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:
            await client.connect()
        if client.last_ehlo_response is None:
            # EHLO now, so the extensions are known before the MAIL options are chosen.
            await client.ehlo()

    async def _release(self, client: aiosmtplib.SMTP, *, healthy: bool) -> None:
        # A connection whose last exchange completed gets a polite QUIT (best effort:
        # a failing QUIT must not turn an accepted message into a 4xx, or the client
        # retries and duplicates it). One that timed out or broke is just closed.
        if not healthy or not client.is_connected:
            client.close()
            return
        try:
            async with asyncio.timeout(_QUIT_TIMEOUT):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()

    async def deliver(
        self,
        mail_from: str,
        rcpt_tos: Sequence[str],
        content: bytes,
        *,
        smtp_utf8: bool = False,
    ) -> DeliveryResult:
        """Send one message; the whole exchange is bounded by ``timeout``."""
        needs_utf8 = _needs_smtputf8(mail_from, rcpt_tos)
        client = self._acquire()
        healthy = False
        try:
            async with asyncio.timeout(self._timeout):
                await self._ready(client)
                options = []
                if client.supports_extension("8bitmime"):
                    options.append("BODY=8BITMIME")
                if needs_utf8 or (smtp_utf8 and client.supports_extension("smtputf8")):
                    # aiosmtplib raises SMTPNotSupported itself when the server lacks it.
                    options.append("SMTPUTF8")
                errors, message = await client.sendmail(
                    mail_from, list(rcpt_tos), content, mail_options=options
                )
            healthy = True
        except aiosmtplib.SMTPRecipientsRefused as exc:
            healthy = True
            return _all_refused(exc)
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as exc:
            healthy = True
            return _refused(exc.code, exc.message, type(exc).__name__)
        except aiosmtplib.SMTPNotSupported as exc:
            healthy = True
            reply = replies.DOWNSTREAM_NO_SMTPUTF8 if needs_utf8 else replies.DOWNSTREAM_TEMPFAIL
            return DeliveryResult(reply, error=str(exc))
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, EHLO and the like: the next hop is unwell, not this message.
            return DeliveryResult(
                replies.DOWNSTREAM_TEMPFAIL,
                next_hop=parse_reply(exc.code, exc.message),
                error=type(exc).__name__,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return DeliveryResult(replies.DOWNSTREAM_TEMPFAIL, error=_describe(exc))
        finally:
            await self._release(client, healthy=healthy)
        next_hop = parse_reply(250, message)  # sendmail raises for anything but 250
        refused = {r: parse_reply(resp.code, resp.message) for r, resp in errors.items()}
        queue_id = m.group(1) if (m := _QUEUE_ID.search(message)) else None
        if refused:
            return DeliveryResult(
                replies.DOWNSTREAM_PARTIAL, next_hop=next_hop, refused=refused, queue_id=queue_id
            )
        return DeliveryResult(next_hop, next_hop=next_hop, queue_id=queue_id)

    async def aclose(self) -> None:
        """Nothing is kept open between messages (yet)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timeout"
    return f"{type(exc).__name__}: {_one_line(str(exc))}"


def _refused(code: int, message: str, what: str) -> DeliveryResult:
    reply = parse_reply(code, message)
    if reply.is_permanent:
        return DeliveryResult(reply, next_hop=reply, error=what)
    return DeliveryResult(replies.DOWNSTREAM_TEMPFAIL, next_hop=reply, error=what)


def _all_refused(exc: aiosmtplib.SMTPRecipientsRefused) -> DeliveryResult:
    refused = {r.recipient: parse_reply(r.code, r.message) for r in exc.recipients}
    permanent = [reply for reply in refused.values() if reply.is_permanent]
    if refused and len(permanent) == len(refused):
        # Every recipient is refused for good: the sender should hear why.
        return DeliveryResult(
            permanent[0], next_hop=permanent[0], refused=refused, error="recipients refused"
        )
    first = next(iter(refused.values()), None)
    return DeliveryResult(
        replies.DOWNSTREAM_TEMPFAIL, next_hop=first, refused=refused, error="recipients refused"
    )


class MaildirDelivery:
    """Write each message once into a Maildir (``tmp/`` -> fsync -> ``new/`` -> fsync
    of the directory), whatever its recipients. The three subdirectories are created
    when missing."""

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
    ) -> DeliveryResult:
        """Store the message; a failing disk is a temporary failure."""
        try:
            name = await asyncio.to_thread(self._write, content)
        except OSError as exc:
            return DeliveryResult(replies.DOWNSTREAM_TEMPFAIL, error=_describe(exc))
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
    )
