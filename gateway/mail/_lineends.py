"""Line endings of a message held as bytes: is it CRLF-only, and pieces cut at line ends.

Shared by the SMTP front (the bare-LF/CR check of DATA) and delivery (DATA sent in
pieces): both walk large messages a piece at a time so that the event loop gets turns.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

__all__ = [
    "SCAN_PIECE",
    "find_bare_line_ending",
    "line_pieces",
    "line_windows",
    "normalize_line_endings",
    "scan_bare_line_ending",
]

_LONE = re.compile(rb"[\r\n]")  # used inside CRLF-split segments: every one is lone


def find_bare_line_ending(content: bytes, start: int = 0, end: int | None = None) -> str | None:
    """``"LF"`` or ``"CR"`` when ``content[start:end]`` has a line ending that is not
    CRLF, else None (the bounds spare a copy of a piece of a large message)."""
    crlf = content.count(b"\r\n", start, end)
    # Counting is cheap and copies nothing; only a mismatch needs a closer look.
    if content.count(b"\n", start, end) != crlf:
        return "LF"
    if content.count(b"\r", start, end) != crlf:
        return "CR"
    return None


def line_windows(content: bytes, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive pieces of ``content`` of at least ``size`` octets (the
    last may be shorter), each cut just after a LF: no CRLF is split, and every piece but
    the first starts at the start of a line."""
    start = 0
    total = len(content)
    while start < total:
        cut = content.find(b"\n", start + size - 1) if start + size < total else -1
        end = total if cut == -1 else cut + 1
        yield start, end
        start = end


def line_pieces(content: bytes, size: int) -> Iterator[bytes]:
    """The pieces of ``line_windows``, as bytes."""
    for start, end in line_windows(content, size):
        yield content[start:end]


SCAN_PIECE = 256 * 1024


async def scan_bare_line_ending(content: bytes, piece: int = SCAN_PIECE) -> str | None:
    """``find_bare_line_ending`` over pieces of about ``piece`` octets cut after a LF, the
    loop getting a turn between them: three passes over 25 MB take about a second on a
    slow machine, and every other session would wait for them."""
    found: str | None = None
    for start, end in line_windows(content, piece):
        kind = find_bare_line_ending(content, start, end)
        if kind == "LF":
            return kind
        found = found or kind
        if end - start < len(content):
            await asyncio.sleep(0)
    return found


def normalize_line_endings(content: bytes) -> bytes:
    """Every lone LF/CR rewritten to CRLF, and the stuffing dot that aiosmtpd left on
    lines after them removed (``gateway.smtp._handler``'s docstring says why). CRLF-only input
    is returned as is."""
    if find_bare_line_ending(content) is None:
        return content
    out: list[bytes] = []
    # Lines that start after a CRLF were already dot-unstuffed by aiosmtpd; lines that
    # start after a lone LF/CR were not.
    for segment in content.split(b"\r\n"):
        parts = _LONE.split(segment)
        out.append(parts[0])
        out.extend(p[1:] if p.startswith(b".") else p for p in parts[1:])
    return b"\r\n".join(out)
