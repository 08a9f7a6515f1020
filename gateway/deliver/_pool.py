"""A small pool of SMTP connections to the next hop, reused across messages.

Opening a connection (TCP, greeting, EHLO) costs the next hop a process or a thread and
us several round trips; a busy gateway sends thousands of messages a minute to the same
Postfix reinjection port. So at most ``size`` connections stay open and each carries
many messages, one at a time:

- between two messages the connection gets ``RSET`` (a clean transaction state), and a
  ``NOOP`` first when it sat idle longer than ``check_after`` seconds; to a next hop
  that pipelines, the RSET goes out in the same write as the next MAIL FROM (a failed
  one there is handled like a failed one here: the message goes on a fresh connection);
- a connection idle longer than ``idle_timeout`` is closed with ``QUIT`` (the next hop
  would drop it anyway: Postfix's smtpd times out idle clients), as is one the next hop
  closed or answered 421;
- a connection that saw any error is discarded, never reused: the caller says so with
  ``release(conn, reusable=False)``;
- ``aclose()`` QUITs the idle connections; those in use are closed when released.

The pool never sends a message itself and never retries one: ``SmtpDelivery`` decides
that (only when nothing of the message reached the next hop).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib

from ._smtp_client import SmtpClient

__all__ = ["Connection", "PoolClosedError", "SmtpPool"]

_QUIT_TIMEOUT = 5.0
_FAILURES = (aiosmtplib.SMTPException, OSError, TimeoutError)


class PoolClosedError(RuntimeError):
    """``acquire`` after ``aclose``: the gateway is shutting down."""


@dataclass(eq=False)
class Connection:
    """One pooled connection; ``reused`` is False for a connection opened for this use."""

    client: SmtpClient
    last_used: float = field(default_factory=time.monotonic)
    uses: int = 0
    reused: bool = False


class SmtpPool:
    """Up to ``size`` connections made by ``factory`` (an unconnected client)."""

    def __init__(
        self,
        factory: Callable[[], SmtpClient],
        *,
        size: int,
        idle_timeout: float = 30.0,
        check_after: float = 5.0,
    ) -> None:
        self._factory = factory
        self._size = size
        self._idle_timeout = idle_timeout
        self._check_after = check_after
        self._slots = asyncio.Semaphore(size)
        self._idle: deque[Connection] = deque()  # oldest left, most recently used right
        self._in_use = 0
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        self._quitting: set[asyncio.Task[None]] = set()
        self.created = 0
        self.discarded = 0
        self.reused = 0
        self.expired = 0

    @property
    def size(self) -> int:
        """The most connections ever open at once."""
        return self._size

    def stats(self) -> dict[str, int]:
        """For metrics: ``open`` = ``idle`` + ``in_use`` <= ``size``; counters since start."""
        return {
            "size": self._size,
            "open": len(self._idle) + self._in_use,
            "idle": len(self._idle),
            "in_use": self._in_use,
            "created": self.created,
            "reused": self.reused,
            "discarded": self.discarded,
            "expired": self.expired,
        }

    async def acquire(self) -> Connection:
        """A connection ready for MAIL FROM: a checked idle one, else a new one. Waits
        for a free slot (the caller bounds the wait); raises what connecting raises."""
        if self._closed:
            raise PoolClosedError("the SMTP pool is closed")
        await self._slots.acquire()
        try:
            conn = await self._take_idle()
            if conn is None:
                conn = await self._open()
        except BaseException:
            self._slots.release()
            raise
        self._in_use += 1
        return conn

    async def replace(self, conn: Connection) -> Connection:
        """Discard ``conn`` and open a fresh connection in its slot. If opening fails,
        the slot is given back and the error raised: do not ``release`` then."""
        self._close(conn.client)
        self.discarded += 1
        try:
            fresh = await self._open()
        except BaseException:
            self._in_use -= 1
            self._slots.release()
            raise
        return fresh

    def release(self, conn: Connection, *, reusable: bool, polite: bool = False) -> None:
        """Give ``conn`` back. ``reusable`` only after a transaction that ended cleanly
        (250 to DATA, no refusal); otherwise it is discarded: QUIT when ``polite`` (the
        session state is known, e.g. after a refusal), else just closed."""
        self._in_use -= 1
        self._slots.release()
        conn.last_used = time.monotonic()
        conn.uses += 1
        if reusable and not self._closed and conn.client.is_connected:
            self._idle.append(conn)
            self._start_reaper()
            return
        if reusable or polite:
            # Fine, but not kept (pool closing): say goodbye without holding the reply.
            self._quit_later(conn.client)
        else:
            self._close(conn.client)
            self.discarded += 1

    async def aclose(self) -> None:
        """QUIT every idle connection; later releases just close theirs."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        idle, self._idle = list(self._idle), deque()
        for conn in idle:
            self._quit_later(conn.client)
        if self._quitting:
            await asyncio.gather(*self._quitting, return_exceptions=True)

    async def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used is the likeliest alive
            idle_for = time.monotonic() - conn.last_used
            client = conn.client
            if not client.is_connected:
                self._close(client)  # the next hop hung up (idle timeout, 421)
                self.expired += 1
                continue
            if idle_for > self._idle_timeout:
                self._quit_later(client)
                self.expired += 1
                continue
            try:
                if idle_for > self._check_after:
                    await client.noop()
                if client.pipelining:
                    client.rset_due = True  # sent in the same write as MAIL FROM
                else:
                    await client.rset()
            except _FAILURES:
                self._close(client)
                self.discarded += 1
                continue
            except BaseException:
                self._close(client)  # cancelled mid-check: its state is unknown
                self.discarded += 1
                raise
            client.mail_accepted = False
            conn.reused = True
            self.reused += 1
            return conn
        return None

    async def _open(self) -> Connection:
        client = self._factory()
        try:
            await client.connect()  # EHLO included: MAIL options follow its extensions
        except BaseException:
            self._close(client)
            raise
        self.created += 1
        return Connection(client)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        # Runs while connections sit idle, so that a quiet gateway lets go of the next
        # hop's processes; ends when none is left.
        interval = max(0.05, self._idle_timeout / 2)
        while self._idle:
            await asyncio.sleep(interval)
            now = time.monotonic()
            while self._idle and now - self._idle[0].last_used > self._idle_timeout:
                conn = self._idle.popleft()
                self.expired += 1
                self._quit_later(conn.client)

    def _quit_later(self, client: SmtpClient) -> None:
        if not client.is_connected:
            self._close(client)
            return
        task = asyncio.get_running_loop().create_task(self._quit(client))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    @staticmethod
    async def _quit(client: SmtpClient) -> None:
        try:
            async with asyncio.timeout(_QUIT_TIMEOUT):
                await client.quit()
        except _FAILURES:
            pass
        finally:
            client.close()

    @staticmethod
    def _close(client: SmtpClient) -> None:
        with contextlib.suppress(*_FAILURES):
            client.close()
