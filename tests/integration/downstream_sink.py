"""A scriptable next hop for the delivery and pipeline tests.

An aiosmtpd ``Controller`` on loopback that records every envelope (sender, recipients,
MAIL options, exact bytes) and can be told to refuse chosen recipients, fail DATA, stall,
lack SMTPUTF8, or not listen at all.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["Received", "SinkBehaviour", "free_port", "running_sink"]


@dataclass(frozen=True)
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    content: bytes


@dataclass
class SinkBehaviour:
    """What the sink does. ``refuse`` maps a recipient to its RCPT reply."""

    refuse: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    data_delay: float = 0.0
    queue_id: str = "SINK42"


class _Handler:
    def __init__(self, behaviour: SinkBehaviour, received: list[Received]) -> None:
        self.behaviour = behaviour
        self.received = received

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        refusal = self.behaviour.refuse.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.behaviour.data_delay:
            await asyncio.sleep(self.behaviour.data_delay)
        if self.behaviour.data_reply:
            return self.behaviour.data_reply
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                mail_options=tuple(envelope.mail_options),
                content=bytes(envelope.original_content),
            )
        )
        return f"250 2.0.0 Ok: queued as {self.behaviour.queue_id}"


@dataclass
class Sink:
    host: str
    port: int
    behaviour: SinkBehaviour
    received: list[Received]

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_sink(
    behaviour: SinkBehaviour | None = None, *, smtputf8: bool = True
) -> Iterator[Sink]:
    """Run the sink on a free loopback port for the duration of the block."""
    behaviour = behaviour or SinkBehaviour()
    received: list[Received] = []
    port = free_port()
    controller = Controller(
        _Handler(behaviour, received),
        hostname="127.0.0.1",
        port=port,
        server_hostname="sink.test",
        ready_timeout=10.0,
        decode_data=False,
        enable_SMTPUTF8=smtputf8,
    )
    controller.start()
    try:
        yield Sink("127.0.0.1", port, behaviour, received)
    finally:
        controller.stop()
