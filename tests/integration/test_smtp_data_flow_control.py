"""DATA to a next hop that is not reading, over real sockets: ``send_data`` writes a
piece, then waits while the transport holds more than its high-water mark
(``SmtpClient.drain``), so a big message is never queued whole in our memory a second
time; once the next hop reads again, every byte arrives."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from gateway.deliver._smtp_client import SmtpClient
from gateway.deliver._smtp_data import CHUNK, send_data, stuffed_pieces

SIZE = 12 * 2**20  # more than the kernel buffers on loopback can absorb (~4 MB)


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    # A small receive window: the kernel takes little while the next hop does not read.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_a_big_message_to_a_next_hop_that_does_not_read_waits_instead_of_queueing() -> None:
    """12 MB while the next hop reads nothing: our transport never holds much more than
    one piece past its high-water mark; then the next hop reads, and gets it all."""
    line = b"%07d a line of a big message, long enough to be ordinary text\r\n"
    content = b"".join(line % i for i in range(SIZE // len(line % 0)))
    reading = asyncio.Event()
    received: list[bytes] = []

    async def next_hop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 flow.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250 flow.test\r\n")
        # Really not reading: asyncio's stream reader would otherwise go on taking bytes
        # off the socket into its own buffer (up to twice its 24 MB limit) while this
        # handler waits, and on a fast machine all 12 MB left us before the first sample.
        transport = cast(asyncio.Transport, writer.transport)
        transport.pause_reading()
        await reading.wait()
        transport.resume_reading()
        received.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250 2.0.0 Ok: queued\r\n")
        await writer.drain()

    sock = _listening_socket()
    server = await asyncio.start_server(next_hop, sock=sock, limit=2 * SIZE)
    client = SmtpClient("127.0.0.1", sock.getsockname()[1], timeout=30, local_hostname="gw.test")
    try:
        await client.connect()
        sending = asyncio.create_task(send_data(client, content))
        most = 0
        for _ in range(200):  # ~1 s without reading: time enough to queue everything
            await asyncio.sleep(0.005)
            most = max(most, client.unsent)
        held_back = not sending.done()
        reading.set()
        response = await sending
    finally:
        client.close()
        server.close()
    assert held_back and response.code == 250
    assert received == [b"".join(stuffed_pieces(content))]
    assert 64 * 1024 <= most <= 64 * 1024 + 2 * CHUNK  # past high water, by a piece at most
