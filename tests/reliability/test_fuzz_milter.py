"""Fuzzing the milter front: what a broken or hostile MTA-side client can send.

A ``MilterSession`` is driven directly (a StreamReader fed the bytes, a writer that
records), so thousands of inputs run in seconds. For every input the session ends by
itself (no exception escapes, no hang), everything it wrote is well-framed milter
packets, and a message reaching end-of-message is handed to the pipeline with the
envelope it was given. The socket-level cases (oversize length, stream cut mid-packet,
the server serving the next connection) are in tests/integration/test_milter_front.py.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.milter import _codec as c
from gateway.milter._session import MilterSession
from gateway.pipeline import InboundMessage, MessageEdits

COMMANDS = [
    c.Cmd.ABORT,
    c.Cmd.BODY,
    c.Cmd.CONNECT,
    c.Cmd.MACRO,
    c.Cmd.BODYEOB,
    c.Cmd.HELO,
    c.Cmd.QUIT_NC,
    c.Cmd.HEADER,
    c.Cmd.MAIL,
    c.Cmd.EOH,
    c.Cmd.RCPT,
    c.Cmd.DATA,
    c.Cmd.UNKNOWN,
    b"X",
]
NEGOTIATE = c.pack(c.Cmd.OPTNEG, struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


class _Decider:
    def __init__(self) -> None:
        self.seen: list[InboundMessage] = []

    async def decide(self, msg: InboundMessage) -> MessageEdits:
        self.seen.append(msg)
        return MessageEdits(verdict="deliver", headers=(("X-CM-Status", "classified"),))


def _run(data: bytes) -> tuple[bytes, _Decider]:
    async def go() -> tuple[bytes, _Decider]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        writer, decider = _Writer(), _Decider()
        session = MilterSession(
            reader,
            cast(Any, writer),
            decider,
            trusted_networks=["10.0.0.0/8"],
            buffer_limit=4096,
            timeout=5,
        )
        async with asyncio.timeout(10):
            await session.run()
        return bytes(writer.data), decider

    return asyncio.run(go())


def _framed(out: bytes) -> list[bytes]:
    """The command bytes of the packets in ``out``; fails on a broken frame."""
    cmds = []
    pos = 0
    while pos < len(out):
        (length,) = struct.unpack(">I", out[pos : pos + 4])
        assert 1 <= length <= c.MAX_PACKET
        cmds.append(out[pos + 4 : pos + 5])
        pos += 4 + length
    assert pos == len(out)
    return cmds


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_end_the_session_cleanly(data: bytes) -> None:
    out, _ = _run(data)
    _framed(out)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(COMMANDS), st.binary(max_size=80)), max_size=30))
def test_random_commands_after_negotiation_end_cleanly_with_framed_replies(
    packets: list[tuple[bytes, bytes]],
) -> None:
    out, decider = _run(NEGOTIATE + b"".join(c.pack(cmd, data) for cmd, data in packets))
    replies = _framed(out)
    assert replies[0] == c.Resp.OPTNEG
    # Every step was negotiated as "no reply": only ends of message are answered.
    assert all(r in (c.Resp.INSHEADER, c.Resp.CONTINUE, c.Resp.PROGRESS) for r in replies[1:])
    for msg in decider.seen:
        assert not msg.trusted_peer or msg.peer_ip.startswith("10.")
        assert len(msg.content) <= 4096 + 2 + sum(len(d) + 16 for _, d in packets)


@SETTINGS
@given(
    st.lists(st.binary(min_size=1, max_size=30).filter(lambda b: b"\0" not in b), max_size=5),
    st.binary(max_size=9000),
)
def test_a_well_formed_message_reaches_the_pipeline_with_its_envelope(
    rcpts: list[bytes], body: bytes
) -> None:
    packets = [c.pack(c.Cmd.MAIL, b"<a@example.com>\0SIZE=10\0")]
    packets += [c.pack(c.Cmd.RCPT, b"<" + r + b">\0") for r in rcpts]
    packets += [c.pack(c.Cmd.HEADER, b"Subject\0 hi\n\tthere\0")]
    packets += [c.pack(c.Cmd.BODY, body[i : i + 1000]) for i in range(0, len(body), 1000)]
    packets += [c.pack(c.Cmd.BODYEOB)]
    out, decider = _run(NEGOTIATE + b"".join(packets))
    (msg,) = decider.seen
    assert msg.mail_from == "a@example.com"
    assert len(msg.rcpt_tos) == len(rcpts)
    assert msg.content.startswith(b"Subject: hi\r\n\tthere\r\n\r\n")
    head = b"Subject: hi\r\n\tthere\r\n\r\n"
    # The buffer limit (classify_max_size + 1 in serve) counts header and body bytes.
    assert msg.content[len(head) :] == body[: 4096 - (len("Subject") + len(" hi\n\tthere") + 4)]
    assert _framed(out)[-1] == c.Resp.CONTINUE
