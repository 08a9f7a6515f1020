"""The milter wire format (protocol version 6): packets, commands, replies, flags.

A packet is a 4-byte big-endian length (command byte included), one command byte and
the data. Strings are NUL-terminated. Numbers are 4-byte big-endian unsigned (the
connect command's port: 2 bytes).
"""

from __future__ import annotations

import asyncio
import struct
from typing import NamedTuple

__all__ = [
    "ACTIONS_WANTED",
    "MAX_PACKET",
    "PROTOCOL_VERSION",
    "Cmd",
    "MilterProtocolError",
    "Packet",
    "Resp",
    "negotiate",
    "pack",
    "read_packet",
    "split_strings",
]

PROTOCOL_VERSION = 6
# Postfix sends body chunks of up to 65,535 bytes; Sendmail's MILTER_CHUNK_SIZE is the same.
# Anything far above that is not a milter client speaking.
MAX_PACKET = 1 << 20


class MilterProtocolError(Exception):
    """The client sent something that is not the milter protocol (the connection ends)."""


class Cmd:
    """Command bytes the MTA sends."""

    ABORT = b"A"
    BODY = b"B"
    CONNECT = b"C"
    MACRO = b"D"
    BODYEOB = b"E"
    HELO = b"H"
    QUIT_NC = b"K"
    HEADER = b"L"
    MAIL = b"M"
    EOH = b"N"
    OPTNEG = b"O"
    QUIT = b"Q"
    RCPT = b"R"
    DATA = b"T"
    UNKNOWN = b"U"


class Resp:
    """Reply bytes the milter sends."""

    ADDRCPT = b"+"
    DELRCPT = b"-"
    ACCEPT = b"a"
    CONTINUE = b"c"
    DISCARD = b"d"
    CHGHEADER = b"m"
    INSHEADER = b"i"
    OPTNEG = b"O"
    PROGRESS = b"p"
    QUARANTINE = b"q"
    REJECT = b"r"
    TEMPFAIL = b"t"
    REPLYCODE = b"y"


# Actions (SMFIF_*): what the milter may do at end of message.
ADDHDRS = 0x01
ADDRCPT = 0x04
DELRCPT = 0x08
CHGHDRS = 0x10
QUARANTINE = 0x20
SETSYMLIST = 0x100
ACTIONS_WANTED = ADDHDRS | ADDRCPT | DELRCPT | CHGHDRS | QUARANTINE

# Protocol steps (SMFIP_*): NO* = do not send that step, NR_* = send it, expect no reply.
NOCONNECT = 0x1
NOHELO = 0x2
NOMAIL = 0x4
NORCPT = 0x8
NOBODY = 0x10
NOHDRS = 0x20
NOEOH = 0x40
NR_HDR = 0x80
NOUNKNOWN = 0x100
NODATA = 0x200
SKIP = 0x400
RCPT_REJ = 0x800
NR_CONN = 0x1000
NR_HELO = 0x2000
NR_MAIL = 0x4000
NR_RCPT = 0x8000
NR_DATA = 0x10000
NR_UNKN = 0x20000
NR_EOH = 0x40000
NR_BODY = 0x80000
HDR_LEADSPC = 0x100000

# Steps we do not need (when the MTA can leave them out) and steps we never answer.
_STEPS_UNWANTED = NOEOH | NOUNKNOWN | NODATA
_NO_REPLY = NR_CONN | NR_HELO | NR_MAIL | NR_RCPT | NR_HDR | NR_BODY | NR_EOH | NR_DATA | NR_UNKN
# Ours: every NO*/NR_* bit above, plus exact header values.
_STEPS_OFFERED = _STEPS_UNWANTED | _NO_REPLY | HDR_LEADSPC

# Macro stage of the negotiation reply (SMFIM_EOM): the queue id at end of message, which
# Postfix sends there by default and Sendmail only when asked.
_STAGE_EOM = 5
_EOM_MACROS = b"i"


class Packet(NamedTuple):
    cmd: bytes
    data: bytes


async def read_packet(reader: asyncio.StreamReader) -> Packet | None:
    """The next packet, or None at a clean end of stream (between packets).

    Raises ``MilterProtocolError`` for a zero or oversize length, and for a stream that
    ends inside a packet."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise MilterProtocolError("connection closed inside a packet length") from None
    (length,) = struct.unpack(">I", head)
    if length == 0 or length > MAX_PACKET:
        raise MilterProtocolError(f"packet length {length} out of range")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise MilterProtocolError("connection closed inside a packet") from None
    return Packet(body[:1], body[1:])


def pack(cmd: bytes, data: bytes = b"") -> bytes:
    """One packet on the wire."""
    return struct.pack(">I", len(data) + 1) + cmd + data


def split_strings(data: bytes) -> list[bytes]:
    """NUL-terminated strings (a missing final NUL is forgiven)."""
    if data.endswith(b"\0"):
        data = data[:-1]
    return data.split(b"\0") if data else []


class Negotiated(NamedTuple):
    """What both sides agreed on: our actions and the MTA's protocol steps."""

    actions: int
    steps: int
    reply: bytes

    def answers(self, no_reply_bit: int) -> bool:
        """True when a step with this NR_* bit needs an answer."""
        return not self.steps & no_reply_bit


def negotiate(data: bytes) -> Negotiated:
    """Our answer to the MTA's OPTNEG: the actions we use and the steps we need, limited
    to what the MTA offers. Raises ``MilterProtocolError`` when the MTA cannot do what
    the gateway needs (header insert/change, recipient add/delete, version < 6)."""
    if len(data) < 12:
        raise MilterProtocolError("negotiation packet too short")
    version, actions, steps = struct.unpack(">III", data[:12])
    if version < PROTOCOL_VERSION:
        raise MilterProtocolError(f"milter protocol {version} offered, 6 needed")
    missing = ACTIONS_WANTED & ~actions
    if missing:
        raise MilterProtocolError(f"the MTA does not allow actions 0x{missing:x}")
    agreed = _STEPS_OFFERED & steps
    ours = ACTIONS_WANTED
    macros = b""
    if actions & SETSYMLIST:
        ours |= SETSYMLIST
        macros = struct.pack(">I", _STAGE_EOM) + _EOM_MACROS + b"\0"
    reply = pack(Resp.OPTNEG, struct.pack(">III", PROTOCOL_VERSION, ours, agreed) + macros)
    return Negotiated(ours, agreed, reply)
