"""A big message through the SMTP front while another session talks to it, over real
sockets: the event loop keeps answering the other session while the big one is read and
checked, because the front handles a bounded amount of it per step of the loop
(gateway/data_reader.py ``SLICE``, gateway/lineends.py ``SCAN_PIECE``). No timing is
asserted: the count of round trips shows how often the loop got round to the other
session, whatever the machine's speed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.smtp._data_reader import SLICE

from .smtp_front_support import RawClient, RecordingProcessor, running_server

SIZE = 8 * 2**20
LINE = b"%07d the quick brown fox jumps over the lazy dog, again and again and again\r\n"


def _big_message() -> bytes:
    head = b"From: a@example.net\r\nTo: triage@example.com\r\nSubject: big\r\n\r\n"
    body = b"".join(LINE % i for i in range(SIZE // len(LINE % 0)))
    return head + body


def _send_big(port: int, message: bytes, sending: Callable[[], None]) -> str:
    client = RawClient(port, timeout=60)
    try:
        client.reply()
        client.cmd("EHLO big.test")
        client.cmd("MAIL FROM:<a@example.net>")
        client.cmd("RCPT TO:<triage@example.com>")
        assert client.cmd("DATA").startswith("354")
        sending()
        client.send(message + b".\r\n")
        return client.reply()
    finally:
        client.close()


async def _noops_until(port: int, sending: asyncio.Event, done: asyncio.Future[str]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        await sending.wait()
        answered = 0
        while not done.done():
            writer.write(b"NOOP\r\n")
            assert (await reader.readline()).startswith(b"250")
            answered += 1
        return answered
    finally:
        writer.close()


async def test_another_session_keeps_being_answered_while_a_big_message_is_read() -> None:
    """8 MB of DATA: NOOPs on a second session are answered all along (more round trips
    than the 2 MB pieces the stream buffers could allow), and the message arrives whole."""
    processor = RecordingProcessor()
    message = _big_message()
    sending = asyncio.Event()
    loop = asyncio.get_running_loop()

    def started() -> None:
        loop.call_soon_threadsafe(sending.set)

    async with running_server(processor) as server:
        done = asyncio.ensure_future(asyncio.to_thread(_send_big, server.port, message, started))
        answered = await _noops_until(server.port, sending, done)
        reply = await done
    assert reply.startswith("250 ")
    assert processor.messages[0].content == message
    # The message takes at least SIZE / SLICE steps of the loop to read and as many to
    # check, and a NOOP round trip two or three (89-169 round trips measured; reading
    # whatever the stream held per step gave 15-28).
    assert answered >= SIZE // SLICE // 2
