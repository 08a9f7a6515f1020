"""The pieces DATA is sent in: the same bytes aiosmtplib's one-pass rewrite would send."""

from __future__ import annotations

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.deliver._smtp_data import stuffed_pieces


def _reference(content: bytes) -> bytes:
    # aiosmtplib 5's own execute_data_command rewrite, the behaviour to keep.
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(content)) + b".\r\n"


FRAGMENTS = st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"From x", b" ", b"\x00"])


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAGMENTS, max_size=80).map(b"".join), st.integers(1, 40))
def test_pieces_join_to_exactly_what_aiosmtplib_would_send(content: bytes, size: int) -> None:
    """Whatever the line endings and dots, and wherever the cuts fall, the pieces join to
    the CRLF-only, dot-stuffed message with its terminator."""
    assert b"".join(stuffed_pieces(content, size)) == _reference(content)


def test_a_large_message_is_cut_into_pieces_that_end_at_line_ends() -> None:
    """A 3 MB message goes out in pieces of about 256 KB, each ending with CRLF, the last
    carrying the terminator."""
    content = b"".join(b".line %07d\r\n" % i for i in range(200_000))
    pieces = list(stuffed_pieces(content))
    assert len(pieces) > 10
    assert all(p.endswith(b"\r\n") for p in pieces)
    assert max(len(p) for p in pieces) < 300 * 1024
    assert pieces[-1].endswith(b"\r\n.\r\n") and len(pieces[-1]) > 3
    assert b"".join(pieces) == _reference(content)


@pytest.mark.parametrize("content", [b"", b"x", b"Subject: a\r\n\r\nbody\r\n", b"a\n.b"])
def test_a_small_message_is_one_piece_with_its_terminator(content: bytes) -> None:
    """Under the piece size the whole DATA, final dot included, is one write."""
    (piece,) = stuffed_pieces(content)
    assert piece == _reference(content)
