"""The header block reader's fast path gives exactly what the stdlib parser gives."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.mimeheaders import (
    _parsed_header_items,
    block_header_items,
    header_block_end,
    simple_header_items,
)

ENDINGS = [b"\r\n", b"\n", b"\r", b""]
NAMES = [
    b"From",
    b"To",
    b"Subject",
    b"X-A",
    b"Message-Id",
    b"a:b",
    b"",
    b"From ",
    b"B d",
    b"\xc3\xa4",
]
VALUES = [b"", b" x", b"x", b"\t y ", b"  ", b" =?utf-8?q?a?=", b" \xc3\xa4\xff", b" a\x00b", b":"]
LINE = st.one_of(
    st.builds(
        lambda n, v, e: n + b":" + v + e,
        st.sampled_from(NAMES),
        st.sampled_from(VALUES),
        st.sampled_from(ENDINGS),
    ),
    st.builds(
        lambda w, v, e: w + v + e,
        st.sampled_from([b" ", b"\t"]),
        st.sampled_from(VALUES),
        st.sampled_from(ENDINGS),
    ),
    st.builds(
        lambda v, e: v + e,
        st.sampled_from([b"From x", b"junk", b"", b"\x85"]),
        st.sampled_from(ENDINGS),
    ),
    st.binary(max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(LINE, max_size=8), st.sampled_from([b"", b"\r\n", b"\n", b"\r", b"\r\nbody"]))
@example([b"Subject: a\r", b"\nTo: b\r\n"], b"")
@example([b" lead\r\n", b"To: b\r\n"], b"\r\n")
@example([b"Subject:   \r\n", b"\tfolded\r\n"], b"\r\n")
def test_header_items_of_any_block_equal_the_stdlib_parsers(
    lines: list[bytes], tail: bytes
) -> None:
    raw = b"".join(lines) + tail
    for block in (raw, raw[: header_block_end(raw)]):
        assert block_header_items(block) == _parsed_header_items(block)


def test_the_common_block_takes_the_fast_path() -> None:
    block = (
        b"From: <sender@bench.example>\r\nTo: <triage@example.com>\r\n"
        b"Date: Tue, 24 Nov 2026 01:30:15 +0000 (UTC)\r\nSubject: Invoice\r\n"
        b"\tquestion \xc3\xa4\r\nX-Empty:\r\n\r\n"
    )
    fast = simple_header_items(block)
    assert fast is not None
    assert fast == _parsed_header_items(block)
    assert fast[3] == ("Subject", "Invoice\r\n\tquestion \udcc3\udca4")
