"""The ``maildir:///path`` next hop: each message written once into a Maildir."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from gateway import replies

from ._result import DeliveryResult, describe_error
from ._xforward import XForward

__all__ = ["MaildirDelivery"]


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
        original_rcpts: Sequence[str] = (),
    ) -> DeliveryResult:
        """Store the message with the envelope on top, as Postfix's local delivery does
        (``Return-Path``; one ``X-Original-To`` per recipient the client gave, before the
        rules; one ``Delivered-To`` per recipient: where the rules sent it); ``xforward``
        and ``crlf_only`` have no meaning here. A failing disk is a temporary failure."""
        envelope = [
            f"Return-Path: <{mail_from}>",
            *(f"X-Original-To: {r}" for r in dict.fromkeys(original_rcpts)),
            *(f"Delivered-To: {r}" for r in rcpt_tos),
        ]
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
