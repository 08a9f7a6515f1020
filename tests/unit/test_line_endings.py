"""The bare-LF/CR scan of a large message in pieces gives the one-pass answer."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mail import find_bare_line_ending, scan_bare_line_ending

FRAGMENTS = st.sampled_from([b"\r\n", b"\n", b"\r", b"a", b"bc", b".", b"\r\r\n"])


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAGMENTS, max_size=60).map(b"".join), st.integers(1, 12))
def test_scanning_in_pieces_answers_like_one_pass(content: bytes, piece: int) -> None:
    """Wherever the pieces are cut, a CRLF is never split into a bare CR and a bare LF,
    and a bare LF anywhere wins over a bare CR, as in one pass."""
    assert asyncio.run(scan_bare_line_ending(content, piece)) == find_bare_line_ending(content)


def test_a_bare_lf_at_the_end_of_a_3_mb_message_is_found() -> None:
    """A 3 MB CRLF message with one bare LF in its last line is still refused."""
    content = b"x" * 78 + b"\r\n"
    content = content * 40_000 + b"last line\n"
    assert asyncio.run(scan_bare_line_ending(content)) == "LF"
    assert asyncio.run(scan_bare_line_ending(content[:-1] + b"\r\n")) is None
