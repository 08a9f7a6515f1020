"""read_data (gateway/data_reader.py) against aiosmtpd's own DATA loop: the same byte
streams, cut into the same random chunks, sent to a real aiosmtpd server and fed to a
StreamReader with the same limits; the outcome, the content, and the bytes left after
the terminator must agree."""

from __future__ import annotations

import asyncio
import itertools
import random

from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.smtp._data_reader import JOIN_IN_THREAD, SLICE, DataOutcome, DataResult, read_data

LIMIT = 64  # the stream limit: the longest line, as aiosmtpd's 1 MiB in production
MAX_SIZE = 300
_AFTER = b"NOOP\r\n"  # what a client sends after the terminator: must stay unread


class _Recorder:
    def __init__(self) -> None:
        self.content: bytes | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.content = envelope.original_content
        return "250 OK"


class _SmallSMTP(SMTP):
    # As in GatewaySMTP: the stream's limit is the class value, and the instance value
    # (aiosmtpd's check of a joined line) is lifted to the message size after __init__.
    line_length_limit = LIMIT

    def __init__(self, handler: _Recorder) -> None:
        super().__init__(handler, hostname="ref", data_size_limit=MAX_SIZE)
        self.line_length_limit = max(2**20, MAX_SIZE)


async def _aiosmtpd(body: bytes, cuts: list[int]) -> tuple[str, bytes | None]:
    recorder = _Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _SmallSMTP(recorder),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        for command in (b"HELO c\r\n", b"MAIL FROM:<a@b.c>\r\n", b"RCPT TO:<d@e.f>\r\n"):
            writer.write(command)
            await reader.readline()
        writer.write(b"DATA\r\n")
        await reader.readline()
        for piece in _pieces(body + _AFTER, cuts):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)
        reply = (await reader.readline()).decode()
        writer.close()
    finally:
        server.close()
    return reply, recorder.content


async def _ours(
    body: bytes, cuts: list[int], step_size: int = SLICE
) -> tuple[DataOutcome, bytes, bytes]:
    reader = asyncio.StreamReader(limit=LIMIT)

    async def feed() -> None:
        for piece in _pieces(body + _AFTER, cuts):
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    result = await read_data(reader, line_limit=LIMIT, max_size=MAX_SIZE, step_size=step_size)
    await feeder
    return result.outcome, result.content, await reader.read()


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


_FRAGMENTS = st.sampled_from(
    [b"a", b"b c", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"\r\n..\r\n",
     b"x" * 30, b"y" * 63, b"z" * 64, b"w" * 65, b"\r\n.\n", b"\n.\r\n", b"\x00", b"\xff"]
)  # fmt: skip


def _body(parts: list[bytes]) -> bytes:
    """The parts as DATA, ending at the first "." line (as the stream would end them)."""
    text = b"".join(parts)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    data = text + b".\r\n"
    # The section starts right after the DATA command's CRLF.
    end = (b"\r\n" + data).find(b"\r\n.\r\n")
    return data[: end + 3]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(_FRAGMENTS, max_size=30),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.one_of(st.just(SLICE), st.integers(8, 100)),
)
@example([b".", b"\r\n"], [], SLICE)
@example([b"w" * 65, b"\r\n"], [], SLICE)
@example([b"x" * 30, b"\r\n"] * 11, [], SLICE)
@example([b"w" * 65, b"\r\n"] + [b"x" * 30, b"\r\n"] * 11, [3, 70], SLICE)
@example([b"x" * 30, b"\r\n"] * 11 + [b"w" * 65, b"\r\n"], [5], SLICE)
@example([b"..", b"\r\n", b".x", b"\r\n"], [1, 2, 3, 4], SLICE)
@example([b"z" * 64, b"\r", b"\n", b"a"], [64, 65], SLICE)
@example([b"x" * 30, b"\r\n", b"..", b"\r\n", b".", b"\r\n"], [], 8)
@example([b"a", b"\r", b"\r\n", b".", b"\r\n"] * 4, [], 9)
def test_read_data_answers_like_aiosmtpds_data_loop(
    parts: list[bytes], cuts: list[int], step_size: int
) -> None:
    """Any stream, cut anywhere, read in steps of any size: aiosmtpd's outcome and content."""
    body = _body(parts)

    async def both() -> tuple[tuple[str, bytes | None], tuple[DataOutcome, bytes, bytes]]:
        return await _aiosmtpd(body, cuts), await _ours(body, cuts, step_size)

    (reply, content), (outcome, ours, left) = asyncio.run(both())
    assert left == _AFTER
    if reply.startswith("250"):
        assert outcome is DataOutcome.NOMINAL and ours == content
    elif reply.startswith("500"):
        assert outcome is DataOutcome.TOO_LONG
    else:
        assert reply.startswith("552") and outcome is DataOutcome.TOO_MUCH, reply


async def _read_counting_turns(reader: asyncio.StreamReader) -> tuple[DataResult, int]:
    """``read_data`` while another task counts the loop turns it gets meanwhile."""
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    result = await read_data(reader, line_limit=2**20, max_size=None)
    task.cancel()
    return result, turns


def test_a_big_section_is_read_in_pieces_with_turns_for_other_tasks() -> None:
    """2 MB of 80-octet lines with a 1 MiB limit: other tasks run while it is read."""
    line = b"." + b"x" * 77 + b"\r\n"
    body = line * (2 * 2**20 // len(line)) + b".\r\n"

    async def run() -> tuple[bytes, int]:
        reader = asyncio.StreamReader(limit=2**20)
        reader.feed_data(body)
        reader.feed_eof()
        result, turns = await _read_counting_turns(reader)
        return result.content, turns

    content, turns = asyncio.run(run())
    assert content == (b"x" * 77 + b"\r\n") * (2 * 2**20 // len(line))
    assert turns >= 2


def test_a_section_buffered_whole_is_still_read_one_step_size_at_a_time() -> None:
    """4 MB already in the stream's buffer (as after a busy spell of the loop): another
    task gets a turn after every SLICE octets, and the section (joined in a thread past
    JOIN_IN_THREAD) comes back whole."""
    line = b"y" * 78 + b"\r\n"
    count = 4 * 2**20 // len(line)
    assert count * len(line) > JOIN_IN_THREAD

    async def run() -> tuple[bytes, int]:
        reader = asyncio.StreamReader(limit=2**20)
        reader.feed_data(line * count + b".\r\nNOOP\r\n")
        result, turns = await _read_counting_turns(reader)
        assert await reader.readexactly(6) == b"NOOP\r\n"
        return result.content, turns

    content, turns = asyncio.run(run())
    assert content == line * count
    assert turns >= count * len(line) // SLICE - 1


def test_random_cuts_of_a_real_message_give_the_same_content() -> None:
    rng = random.Random(7)
    body = b"Subject: hi\r\n\r\n..dots\r\n.\r\n"
    assert asyncio.run(_ours(body, [rng.randrange(40) for _ in range(5)]))[1] == (
        b"Subject: hi\r\n\r\n.dots\r\n"
    )
