"""The MTA side of the milter protocol, for tests: what Postfix's milter8 client sends.

    async with milter_client("127.0.0.1:11332") as mta:
        replies = await mta.message("a@x", ["b@y"], MESSAGE)   # the end-of-message replies

Each reply is a ``(command byte, data)`` pair; ``edits`` decodes them. ``steps`` is what
the client offers in the negotiation (Postfix 3.7 offers all of the NO*/NR_* bits below).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from gateway.milter import _codec as c

__all__ = ["POSTFIX_STEPS", "Edits", "MilterClient", "milter_client", "split_message"]

# What Postfix 3.7 offers in SMFIC_OPTNEG (milter8.c: the v6 event mask).
POSTFIX_ACTIONS = 0x1FF
POSTFIX_STEPS = 0x1FFFFF


def split_message(content: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields (name, value as Postfix sends them with HDR_LEADSPC: folds joined
    with a bare LF) and the body, from a CRLF message."""
    head, _, body = content.partition(b"\r\n\r\n")
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields, body


@dataclass
class Edits:
    """End-of-message replies, decoded."""

    final: bytes = b""
    reply: str | None = None
    inserted: list[tuple[int, str, str]] = field(default_factory=list)
    changed: list[tuple[int, str, str]] = field(default_factory=list)
    added_rcpts: list[str] = field(default_factory=list)
    deleted_rcpts: list[str] = field(default_factory=list)
    quarantine: str | None = None
    progress: int = 0


def _strings(data: bytes) -> list[str]:
    return [s.decode() for s in c.split_strings(data)]


def edits_of(packets: Sequence[tuple[bytes, bytes]]) -> Edits:
    out = Edits()
    for cmd, data in packets:
        if cmd == c.Resp.PROGRESS:
            out.progress += 1
        elif cmd == c.Resp.INSHEADER:
            (index,) = struct.unpack(">I", data[:4])
            name, value = data[4:].split(b"\0")[:2]
            out.inserted.append((index, name.decode(), value.decode()))
        elif cmd == c.Resp.CHGHEADER:
            (index,) = struct.unpack(">I", data[:4])
            name, value = data[4:].split(b"\0")[:2]
            out.changed.append((index, name.decode(), value.decode()))
        elif cmd == c.Resp.ADDRCPT:
            out.added_rcpts.extend(_strings(data))
        elif cmd == c.Resp.DELRCPT:
            out.deleted_rcpts.extend(_strings(data))
        elif cmd == c.Resp.QUARANTINE:
            out.quarantine = _strings(data)[0]
        elif cmd == c.Resp.REPLYCODE:
            out.reply = _strings(data)[0]
            out.final = cmd
        else:
            out.final = cmd
    return out


class MilterClient:
    """One milter connection, driven like an MTA's SMTP session."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.negotiated: tuple[int, int, int] | None = None

    async def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.writer.write(c.pack(cmd, data))
        await self.writer.drain()

    async def read(self) -> tuple[bytes, bytes]:
        async with asyncio.timeout(30):
            packet = await c.read_packet(self.reader)
        assert packet is not None, "the milter closed the connection"
        return packet.cmd, packet.data

    def answers(self, bit: int) -> bool:
        assert self.negotiated is not None
        return not self.negotiated[2] & bit

    async def step(self, cmd: bytes, data: bytes, no_reply_bit: int) -> None:
        await self.send(cmd, data)
        if self.answers(no_reply_bit):
            got, _ = await self.read()
            assert got == c.Resp.CONTINUE, got

    async def negotiate(
        self, actions: int = POSTFIX_ACTIONS, steps: int = POSTFIX_STEPS
    ) -> tuple[int, int, int]:
        await self.send(c.Cmd.OPTNEG, struct.pack(">III", 6, actions, steps))
        cmd, data = await self.read()
        assert cmd == c.Resp.OPTNEG
        self.negotiated = struct.unpack(">III", data[:12])
        return self.negotiated

    async def connect(self, ip: str = "203.0.113.9", helo: str = "client.example") -> None:
        family = b"6" if ":" in ip else b"4"
        data = b"client.example\0" + family + struct.pack(">H", 40000) + ip.encode() + b"\0"
        await self.step(c.Cmd.CONNECT, data, c.NR_CONN)
        await self.step(c.Cmd.HELO, helo.encode() + b"\0", c.NR_HELO)

    async def message(
        self,
        sender: str,
        rcpts: Sequence[str],
        content: bytes,
        *,
        queue_id: str = "4ABCDEF",
        chunk: int = 65535,
    ) -> Edits:
        await self.step(c.Cmd.MAIL, f"<{sender}>\0".encode(), c.NR_MAIL)
        for rcpt in rcpts:
            await self.step(c.Cmd.RCPT, f"<{rcpt}>\0".encode(), c.NR_RCPT)
        fields, body = split_message(content)
        for name, value in fields:
            await self.step(c.Cmd.HEADER, name + b"\0" + value + b"\0", c.NR_HDR)
        await self.step(c.Cmd.EOH, b"", c.NR_EOH)
        for start in range(0, len(body), chunk):
            await self.step(c.Cmd.BODY, body[start : start + chunk], c.NR_BODY)
        await self.send(c.Cmd.MACRO, b"E" + b"i\0" + queue_id.encode() + b"\0")
        await self.send(c.Cmd.BODYEOB)
        packets = []
        while True:
            cmd, data = await self.read()
            packets.append((cmd, data))
            if cmd in (b"c", b"a", b"r", b"t", b"d", b"y"):
                break
        with contextlib.suppress(ConnectionError):  # the milter may be shutting down
            await self.send(c.Cmd.ABORT)  # as Postfix does after every message
        return edits_of(packets)

    async def quit(self) -> None:
        await self.send(c.Cmd.QUIT)


@contextlib.asynccontextmanager
async def milter_client(address: str, *, negotiate: bool = True) -> AsyncIterator[MilterClient]:
    if address.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(address[5:])
    else:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    client = MilterClient(reader, writer)
    try:
        if negotiate:
            await client.negotiate()
        yield client
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
