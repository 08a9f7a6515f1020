"""One milter connection (one SMTP session of the MTA): the per-connection state machine.

Connection state (client address, HELO, connect macros) lives as long as the
connection; message state (envelope, headers, body, message macros) is reset at MAIL and
at ABORT, which Postfix sends after every message. At end of message the pipeline
decides; while it works the MTA gets a progress packet about once a second, so that
its content timer (Postfix: ``milter_content_timeout``) does not fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
import time
import uuid
from collections.abc import Sequence

from gateway import replies
from gateway.logsetup import get_logger
from gateway.pipeline import InboundMessage, MessageDecider, MessageEdits
from gateway.replies import Reply

from . import _codec as c
from ._codec import Cmd, MilterProtocolError, Packet, Resp, pack

__all__ = ["MilterSession", "reply_packet"]

_log = get_logger("cm-gateway.milter")

PROGRESS_EVERY = 1.0
_CONTINUE = pack(Resp.CONTINUE)
_NO_REPLY_FOR = {
    Cmd.CONNECT: c.NR_CONN,
    Cmd.HELO: c.NR_HELO,
    Cmd.MAIL: c.NR_MAIL,
    Cmd.RCPT: c.NR_RCPT,
    Cmd.HEADER: c.NR_HDR,
    Cmd.EOH: c.NR_EOH,
    Cmd.BODY: c.NR_BODY,
    Cmd.DATA: c.NR_DATA,
    Cmd.UNKNOWN: c.NR_UNKN,
}


def reply_packet(reply: Reply) -> bytes:
    """SMFIR_REPLYCODE for ``reply``, ``%`` doubled (Postfix drops a lone ``%``,
    Sendmail then ignores the whole text)."""
    text = f"{reply.code} {reply.enhanced} {reply.text}".replace("%", "%%")
    return pack(Resp.REPLYCODE, text.encode("ascii", "replace") + b"\0")


def _address(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text


def _header_line(name: bytes, value: bytes, exact: bool) -> bytes:
    # Folded values arrive joined with a bare LF: the message the pipeline parses has CRLF.
    value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return name + (b":" if exact else b": ") + value + b"\r\n"


def _milter_value(value: str, exact: bool) -> bytes:
    """A header value for the MTA: folds with a bare LF (the MTA writes its own line
    ends); with exact values (HDR_LEADSPC) the leading space is ours to give."""
    out = value.replace("\r\n", "\n")
    if exact:
        out = " " + out
    return out.encode("utf-8", "replace") + b"\0"


class _Message:
    """What the MTA sent of the current message."""

    __slots__ = (
        "body",
        "headers",
        "kept",
        "macros",
        "mail_args",
        "overflow",
        "rcpts",
        "sender",
        "size",
    )

    def __init__(self) -> None:
        self.sender: bytes | None = None
        self.mail_args: list[bytes] = []
        self.rcpts: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.size = 0  # bytes received (headers counted as "Name: value\r\n")
        self.kept = 0  # bytes of those kept, up to the session's buffer limit
        self.overflow = False
        self.macros: dict[str, str] = {}


class MilterSession:
    """Serves one milter connection until the MTA quits or the stream ends."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decider: MessageDecider,
        *,
        trusted_networks: Sequence[str],
        buffer_limit: int,
        timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.decider = decider
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]
        self._limit = buffer_limit
        self._timeout = timeout
        self._negotiated: c.Negotiated | None = None
        self._peer_ip = ""
        self._peer_port: int | None = None
        self._helo = ""
        self._conn_macros: dict[str, str] = {}
        self._msg = _Message()
        self.in_eom = False
        # Set by the server's shutdown: end the connection once the message being
        # decided has its answer.
        self.closing = False

    @property
    def _exact(self) -> bool:
        return self._negotiated is not None and bool(self._negotiated.steps & c.HDR_LEADSPC)

    async def run(self) -> None:
        """Read and answer packets; protocol errors end the connection (logged)."""
        try:
            while True:
                async with asyncio.timeout(self._timeout):
                    packet = await c.read_packet(self.reader)
                if packet is None or not await self._handle(packet) or self.closing:
                    return
        except MilterProtocolError as exc:
            _log.warning("milter_protocol_error", peer=self._peer_ip or None, error=str(exc))
        except TimeoutError:
            _log.warning("milter_idle_timeout", peer=self._peer_ip or None, timeout=self._timeout)
        except (ConnectionError, asyncio.IncompleteReadError):
            _log.info("milter_connection_lost", peer=self._peer_ip or None)

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _handle(self, packet: Packet) -> bool:
        """One packet; False when the connection is to end."""
        cmd, data = packet
        if cmd == Cmd.OPTNEG:
            self._negotiated = c.negotiate(data)
            await self._send(self._negotiated.reply)
            return True
        if self._negotiated is None:
            raise MilterProtocolError(f"command {cmd!r} before negotiation")
        if cmd == Cmd.MACRO:
            self._macros(data)
            return True
        if cmd == Cmd.QUIT:
            return False
        if cmd == Cmd.QUIT_NC:  # the MTA reuses this connection for a new SMTP session
            self._reset_connection()
            return True
        if cmd == Cmd.ABORT:
            self._msg = _Message()
            return True
        if cmd == Cmd.BODYEOB:
            if data:
                self._body(data)
            await self._end_of_message()
            return True
        handler = {
            Cmd.CONNECT: self._connect,
            Cmd.HELO: self._helo_cmd,
            Cmd.MAIL: self._mail,
            Cmd.RCPT: self._rcpt,
            Cmd.HEADER: self._header,
            Cmd.BODY: self._body,
            Cmd.EOH: None,
            Cmd.DATA: None,
            Cmd.UNKNOWN: None,
        }
        if cmd not in handler:
            raise MilterProtocolError(f"unknown command {cmd!r}")
        step = handler[cmd]
        if step is not None:
            step(data)
        if self._negotiated.answers(_NO_REPLY_FOR[cmd]):
            await self._send(_CONTINUE)
        return True

    def _reset_connection(self) -> None:
        self._peer_ip, self._peer_port, self._helo = "", None, ""
        self._conn_macros = {}
        self._msg = _Message()

    def _macros(self, data: bytes) -> None:
        if not data:
            raise MilterProtocolError("empty macro packet")
        stage, items = data[:1], c.split_strings(data[1:])
        pairs = {
            items[i].decode("utf-8", "replace"): items[i + 1].decode("utf-8", "replace")
            for i in range(0, len(items) - 1, 2)
        }
        if stage in (Cmd.CONNECT, Cmd.HELO):
            self._conn_macros.update(pairs)
        else:
            self._msg.macros.update(pairs)

    def _connect(self, data: bytes) -> None:
        _host, sep, rest = data.partition(b"\0")
        if not sep or not rest:
            raise MilterProtocolError("malformed connect")
        family = rest[:1]
        if family in (b"4", b"6") and len(rest) >= 3:
            (self._peer_port,) = struct.unpack(">H", rest[1:3])
            self._peer_ip = rest[3:].rstrip(b"\0").decode("ascii", "replace")
            if family == b"6" and self._peer_ip.lower().startswith("ipv6:"):
                self._peer_ip = self._peer_ip[5:]

    def _helo_cmd(self, data: bytes) -> None:
        self._helo = data.rstrip(b"\0").decode("utf-8", "replace")

    def _mail(self, data: bytes) -> None:
        self._msg = _Message()  # a new message: nothing of the last one carries over
        args = c.split_strings(data)
        if not args:
            raise MilterProtocolError("MAIL without a sender")
        self._msg.sender, self._msg.mail_args = args[0], args[1:]

    def _rcpt(self, data: bytes) -> None:
        args = c.split_strings(data)
        if not args:
            raise MilterProtocolError("RCPT without a recipient")
        self._msg.rcpts.append(args[0])

    def _header(self, data: bytes) -> None:
        parts = data.split(b"\0")
        if len(parts) < 2 or not parts[0]:
            raise MilterProtocolError("malformed header")
        name, value = parts[0], parts[1]
        msg = self._msg
        length = len(name) + len(value) + 4
        msg.size += length
        if msg.kept + length <= self._limit:
            msg.headers.append((name, value))
            msg.kept += length
        else:  # counted, not kept: the message is over classify_max_size anyway
            msg.overflow = True

    def _body(self, data: bytes) -> None:
        msg = self._msg
        msg.size += len(data)
        room = self._limit - msg.kept
        if room > 0:
            msg.body += data[:room]
            msg.kept += min(room, len(data))
        if len(data) > room:
            msg.overflow = True  # counted from here on, not kept

    def _content(self) -> bytes:
        exact = self._exact
        head = b"".join(_header_line(n, v, exact) for n, v in self._msg.headers)
        return head + b"\r\n" + bytes(self._msg.body)

    def _trusted_peer(self) -> bool:
        try:
            address = ipaddress.ip_address(self._peer_ip)
        except ValueError:
            return False
        return any(address in net for net in self._trusted)

    def _inbound(self) -> InboundMessage:
        msg = self._msg
        if msg.sender is None:
            raise MilterProtocolError("end of message before MAIL")
        macros = {**self._conn_macros, **msg.macros}
        options = tuple(a.decode("utf-8", "replace") for a in msg.mail_args)
        return InboundMessage(
            mail_from=_address(msg.sender),
            rcpt_tos=tuple(_address(r) for r in msg.rcpts),
            content=self._content(),
            peer_ip=self._peer_ip,
            helo=self._helo,
            smtp_utf8=any(o.upper() == "SMTPUTF8" for o in options),
            mail_options=options,
            tls=bool(macros.get("{tls_version}")),
            authenticated_user=macros.get("{auth_authen}") or None,
            trusted_peer=self._trusted_peer(),
            queue_id=macros.get("i") or uuid.uuid4().hex[:12].upper(),
            received_at=time.time(),
            peer_port=self._peer_port,
        )

    async def _progress(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(PROGRESS_EVERY)
                await self._send(pack(Resp.PROGRESS))

    async def _end_of_message(self) -> None:
        inbound = self._inbound()
        self.in_eom = True
        ticker = asyncio.create_task(self._progress())
        try:
            edits = await self.decider.decide(inbound)
        except Exception:
            # Logged by the pipeline with its stage; never a 5xx for our own failure.
            edits = MessageEdits(verdict="error", reply=replies.INTERNAL_ERROR)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.in_eom = False
        await self._send(b"".join(self._packets(edits)))
        self._msg = _Message()

    def _packets(self, edits: MessageEdits) -> list[bytes]:
        """The end-of-message replies for ``edits`` (the table in deploy/postfix-milter)."""
        if edits.reply is not None:
            return [reply_packet(edits.reply)]
        if edits.discard:
            return [pack(Resp.DISCARD)]
        exact = self._exact
        out: list[bytes] = []
        for name in edits.removed:
            count = sum(
                1 for n, _ in self._msg.headers if n.decode("latin-1").lower() == name.lower()
            )
            # Highest index first: deleting one cannot renumber those still to delete.
            for index in range(count, 0, -1):
                data = struct.pack(">I", index) + name.encode("ascii") + b"\0\0"
                out.append(pack(Resp.CHGHEADER, data))
        if edits.subject is not None:
            data = struct.pack(">I", 1) + b"Subject\0" + _milter_value(edits.subject, exact)
            out.append(pack(Resp.CHGHEADER, data))
        # Index 0 is the MTA's own Received (never shown to us): 1, 2, ... = just below
        # it, in our order.
        for index, (name, value) in enumerate(edits.headers, start=1):
            data = struct.pack(">I", index) + name.encode("ascii") + b"\0"
            out.append(pack(Resp.INSHEADER, data + _milter_value(value, exact)))
        if edits.recipients is not None:
            keep = {r.lower() for r in edits.recipients}
            had = {_address(r).lower() for r in self._msg.rcpts}
            for raw in self._msg.rcpts:  # exactly as the MTA sent them
                if _address(raw).lower() not in keep:
                    out.append(pack(Resp.DELRCPT, raw + b"\0"))
            for rcpt in edits.recipients:
                if rcpt.lower() not in had:
                    out.append(pack(Resp.ADDRCPT, f"<{rcpt}>".encode() + b"\0"))
        if edits.hold is not None:
            out.append(pack(Resp.QUARANTINE, edits.hold.encode("ascii", "replace") + b"\0"))
        out.append(_CONTINUE)
        return out
