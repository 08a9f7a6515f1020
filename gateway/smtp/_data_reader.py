"""Reading a DATA section in large pieces instead of aiosmtpd's line-by-line loop.

aiosmtpd awaits ``readuntil(b"\\r\\n")`` once per line, then dot-unstuffs line by line
and joins the lines after the terminator: for a 25 MB message that is 330,000 turns of
a Python loop, the last two (unstuff + join: 0.6 s on this project's VM) in one step of
the event loop, while no other session is answered. ``read_data`` works on what the
stream has buffered, at most ``SLICE`` octets per step of the loop (the stream buffers up
to 2 MB while the loop is busy elsewhere): it searches them for the terminator, takes
them, checks line lengths and unstuffs with ``bytes`` methods, lets the other sessions
run, and joins the pieces at the end (in a thread past ``JOIN_IN_THREAD``).

It keeps aiosmtpd's outcomes (``tests/unit/test_data_reader.py`` runs both on the same
byte streams):

- the data ends at the first line that is exactly ``.`` (lines end in CRLF only);
- a line longer than the stream's limit makes the outcome ``TOO_LONG``, more than
  ``max_size`` octets make it ``TOO_MUCH``, whichever aiosmtpd would meet first; the
  rest is still read (and dropped) up to the terminator;
- one leading dot is removed from every line that starts with one.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

__all__ = ["JOIN_IN_THREAD", "SLICE", "DataOutcome", "DataResult", "read_data"]

JOIN_IN_THREAD = 2 << 20  # octets: a larger section is joined off the event loop
SLICE = 256 * 1024  # octets handled per step of the event loop, at most
_END = b"\r\n.\r\n"
_CR = 13


class DataOutcome(enum.Enum):
    """How a DATA section ended."""

    NOMINAL = "nominal"
    TOO_LONG = "too-long"
    TOO_MUCH = "too-much"


@dataclass(frozen=True, slots=True)
class DataResult:
    """The unstuffed content (empty unless ``NOMINAL``) and the outcome. ``bare``: for
    ``TOO_LONG``, ``"LF"``/``"CR"`` when the over-long line holds a bare line end (a
    message of bare-LF lines is one long line to SMTP: its bare LF is the real reason)."""

    content: bytes
    outcome: DataOutcome
    bare: str | None = None


class _Section:
    """One DATA section's state while its pieces arrive (pieces never split a CRLF)."""

    def __init__(self, line_limit: int, max_size: int | None) -> None:
        self.line_limit = line_limit
        self.max_size = max_size
        self.pieces: list[bytes] = []
        self.size = 0  # octets so far, CRLFs included (what aiosmtpd compares)
        self.partial = 0  # octets of the current line so far, before its CRLF
        self.outcome = DataOutcome.NOMINAL
        self.bare: str | None = None

    @property
    def at_line_start(self) -> bool:
        return self.partial == 0

    def add(self, piece: bytes) -> None:
        """Account for ``piece``: complete lines, possibly ending in a partial one."""
        if self.outcome is DataOutcome.NOMINAL:
            self._check(piece)
        if self.outcome is DataOutcome.NOMINAL:
            # RFC 5321 4.5.2: one leading dot off every line.
            stuffed = piece[1:] if self.partial == 0 and piece[:1] == b"." else piece
            # Searching first copies nothing: most pieces have no stuffed line, and a
            # fresh copy of a big piece is costly (page faults) while the loop waits.
            if b"\r\n." in stuffed:
                stuffed = stuffed.replace(b"\r\n.", b"\r\n")
            self.pieces.append(stuffed)
        self.size += len(piece)
        end = piece.rfind(b"\r\n")
        self.partial = self.partial + len(piece) if end < 0 else len(piece) - end - 2

    def _check(self, piece: bytes) -> None:
        # aiosmtpd meets a long line when it reads it (before counting it), and the size
        # limit at the end of the line that crosses it: the earlier line decides.
        long_at = self._long_line_start(piece)
        cross_at = None
        if self.max_size and self.size + len(piece) > self.max_size:
            first = self.max_size - self.size  # the first octet over the limit
            crlf = piece.rfind(b"\r\n", 0, first)  # the last line end before it
            cross_at = crlf + 2 if crlf >= 0 else -self.partial
        if long_at is not None and (cross_at is None or long_at <= cross_at):
            start = max(long_at, 0)
            end = piece.find(b"\r\n", start)
            self.bare = _bare_line_end(piece[start : end if end >= 0 else len(piece)])
            self._stop(DataOutcome.TOO_LONG)
        elif cross_at is not None:
            self._stop(DataOutcome.TOO_MUCH)

    def _long_line_start(self, piece: bytes) -> int | None:
        """Where (in ``piece``) the first line over the limit starts, or None."""
        limit = self.line_limit
        if self.partial + len(piece) <= limit:
            return None
        # The first line continues the current one; the last is the new partial line,
        # which counts before its CRLF arrives (it can only grow).
        first = piece.find(b"\r\n")
        if self.partial + (len(piece) if first < 0 else first) > limit:
            return -self.partial
        # A line starting at ``start`` is within the limit when a CRLF starts at most
        # ``limit`` octets after it. The last such CRLF also ends every shorter line in
        # between, so each step jumps about ``limit`` octets in C instead of walking the
        # 10,000s of lines of a piece in Python (25 ms for 2 MB on a slow machine, each
        # piece holding the loop).
        start = first + 2
        while len(piece) - start > limit:
            end = piece.rfind(b"\r\n", start, start + limit + 2)
            if end < 0:
                return start
            start = end + 2
        return None

    def _stop(self, outcome: DataOutcome) -> None:
        self.outcome = outcome
        self.pieces.clear()  # drop what we hold at once, as aiosmtpd does

    async def result(self) -> DataResult:
        if self.outcome is not DataOutcome.NOMINAL:
            return DataResult(b"", self.outcome, self.bare)
        if self.size > JOIN_IN_THREAD:
            # Joining 25 MB holds the loop for ~0.1 s on a slow machine (most of it page
            # faults of the new object); bytes.join copies without the GIL from 1 MB on,
            # so in a thread the other sessions keep running meanwhile.
            content = await asyncio.to_thread(b"".join, self.pieces)
        else:
            content = b"".join(self.pieces)
        self.pieces.clear()
        return DataResult(content, DataOutcome.NOMINAL)


def _bare_line_end(data: bytes) -> str | None:
    # Pieces never split a CRLF, so a CR at the very end is bare too.
    if data.count(b"\n") != data.count(b"\r\n"):
        return "LF"
    if data.count(b"\r") != data.count(b"\r\n"):
        return "CR"
    return None


def _peek(reader: asyncio.StreamReader) -> bytearray:
    # The stream's private buffer (aiosmtpd itself clears it for STARTTLS): the only
    # way to search a bounded part of what is buffered for the terminator, or to see
    # whether the next line is the terminator, without consuming anything.
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    return buffer


async def _more(reader: asyncio.StreamReader) -> None:
    """Wait until more bytes are buffered; at the end of the stream raise what
    ``readuntil`` raises there (``IncompleteReadError``)."""
    if reader._eof:  # type: ignore[attr-defined]
        await reader.readuntil(_END)  # no terminator is buffered: this raises
    # The stream's private wait: no public call waits without consuming, and readuntil
    # would search all that is buffered again (up to 2 MB in one step) on each wake-up.
    await reader._wait_for_data("read_data")  # type: ignore[attr-defined]


async def read_data(
    reader: asyncio.StreamReader,
    *,
    line_limit: int,
    max_size: int | None,
    step_size: int = SLICE,
) -> DataResult:
    """Read one DATA section (after the 354) up to and including its terminator,
    handling at most ``step_size`` octets (at least 8) per step of the event loop."""
    if step_size < 8:
        raise ValueError("step_size must be at least 8 octets")
    section = _Section(line_limit, max_size)
    while True:
        buffer = _peek(reader)
        head = bytes(buffer[:3])
        if section.at_line_start and b".\r\n".startswith(head):
            # The terminator may be this very line, where "\r\n.\r\n" cannot see the
            # CRLF already consumed (or there was none: the first line).
            if head == b".\r\n":
                await reader.readexactly(3)
                return await section.result()
            await _more(reader)  # too little buffered to tell
            continue
        # At most step_size octets are searched, copied and unstuffed per step: the stream
        # buffers up to twice its limit (2 MB) while the loop is busy, and handling all
        # of it at once held the loop for ~60 ms on this project's VM.
        window = min(len(buffer), step_size)
        end = buffer.find(_END, 0, window)
        if end >= 0:
            piece = await reader.readexactly(end + 2)  # up to the CRLF ending the last line
            await reader.readexactly(3)  # the terminator line
            section.add(piece)
            return await section.result()
        if window < step_size:
            await _more(reader)  # a terminator may yet come within the window
            continue
        # No terminator starts before the window's last four octets (one may start there
        # and end beyond it): what comes before is safe to take, never ending in a CR
        # whose LF is still to come.
        take = window - len(_END) + 1
        if buffer[take - 1] == _CR:
            take -= 1
        section.add(await reader.readexactly(take))
        await asyncio.sleep(0)  # other sessions run between pieces
