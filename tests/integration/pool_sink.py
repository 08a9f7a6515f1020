"""A next hop that counts connections and logs every command per connection, for the
SMTP pool tests: a real aiosmtpd server on loopback that can hang up between messages,
die at RSET, or answer 421 to MAIL FROM or DATA."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from .downstream_sink import free_port

__all__ = ["PoolSink", "PoolSinkBehaviour", "running_pool_sink", "wait_until"]


@dataclass
class PoolSinkBehaviour:
    """Faults, each on by its flag. ``*_421`` replies 421 and hangs up."""

    hang_up_after_data: bool = False  # close right after answering DATA
    die_at_rset: bool = False  # close on RSET without a reply
    mail_421_on_reuse: bool = False  # 421 to the 2nd MAIL FROM of a connection
    data_421_once: bool = False  # 421 to the first DATA of the run
    data_delay: float = 0.0
    refuse: frozenset[str] = frozenset()  # recipients answered 550 5.1.1


@dataclass
class PoolSink:
    """What the sink saw; read it from the test's thread."""

    port: int
    behaviour: PoolSinkBehaviour
    commands: dict[int, list[str]] = field(default_factory=dict)  # connection -> verbs
    received: list[bytes] = field(default_factory=list)
    open_now: int = 0
    peak_open: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections that said EHLO (the controller's own start-up probe does not)."""
        with self.lock:
            return len(self.commands)

    def verbs(self, verb: str) -> int:
        """How many times ``verb`` arrived, over every connection."""
        with self.lock:
            return sum(v.count(verb) for v in self.commands.values())


_ids = itertools.count(1)


class _Handler:
    def __init__(self, sink: PoolSink) -> None:
        self.sink = sink
        self.data_421_left = 1 if sink.behaviour.data_421_once else 0

    def _log(self, session: Any, verb: str) -> list[str]:
        with self.sink.lock:
            verbs = self.sink.commands.setdefault(session.conn_id, [])
            verbs.append(verb)
            return list(verbs)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not hasattr(session, "conn_id"):
            session.conn_id = next(_ids)
            with self.sink.lock:
                self.sink.open_now += 1
                self.sink.peak_open = max(self.sink.peak_open, self.sink.open_now)
        self._log(session, "EHLO")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        verbs = self._log(session, "MAIL")
        if self.sink.behaviour.mail_421_on_reuse and verbs.count("MAIL") == 2:
            _hang_up(server)
            return "421 4.4.2 sink.test closing connection"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self._log(session, "RCPT")
        if address in self.sink.behaviour.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self._log(session, "DATA")
        if self.sink.behaviour.data_delay:
            await asyncio.sleep(self.sink.behaviour.data_delay)
        if self.data_421_left:
            self.data_421_left -= 1
            _hang_up(server)
            return "421 4.3.0 sink.test shutting down"
        with self.sink.lock:
            self.sink.received.append(bytes(envelope.original_content))
        if self.sink.behaviour.hang_up_after_data:
            _hang_up(server)
        return "250 2.0.0 Ok: queued as POOL1"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self._log(session, "RSET")
        if self.sink.behaviour.die_at_rset:
            server.transport.abort()
        return "250 2.0.0 Ok"

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        self._log(session, "NOOP")
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self._log(session, "QUIT")
        return "221 2.0.0 Bye"


def _hang_up(server: Any) -> None:
    # After the reply that is being returned has been written.
    asyncio.get_running_loop().call_soon(server.transport.close)


class _CountingSMTP(SMTP):
    def __init__(self, sink: PoolSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def connection_lost(self, error: Exception | None) -> None:
        if self.session is not None and hasattr(self.session, "conn_id"):
            with self._sink.lock:
                self._sink.open_now -= 1
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, sink: PoolSink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def factory(self) -> SMTP:
        return _CountingSMTP(self._sink, self.handler, **self.SMTP_kwargs)


@contextmanager
def running_pool_sink(behaviour: PoolSinkBehaviour | None = None) -> Iterator[PoolSink]:
    """The sink on a free loopback port for the duration of the block."""
    sink = PoolSink(free_port(), behaviour or PoolSinkBehaviour())
    controller = _Controller(
        sink,
        _Handler(sink),
        hostname="127.0.0.1",
        port=sink.port,
        server_hostname="sink.test",
        ready_timeout=10.0,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:  # the predicate reads another thread's state: nothing to await
            if predicate():
                return
            await asyncio.sleep(0.02)
