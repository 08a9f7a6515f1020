"""The header block reader's fast path gives exactly what the stdlib parser gives."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.mail._mimeheaders import (
    _DROPPED,
    _rank,
    block_header_items,
    header_block_end,
    raw_headers,
    simple_header_items,
    stdlib_header_items,
)
from gateway.mail._mimetext import one_line

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
        assert block_header_items(block) == stdlib_header_items(block)


def test_the_common_block_takes_the_fast_path() -> None:
    block = (
        b"From: <sender@bench.example>\r\nTo: <triage@example.com>\r\n"
        b"Date: Tue, 24 Nov 2026 01:30:15 +0000 (UTC)\r\nSubject: Invoice\r\n"
        b"\tquestion \xc3\xa4\r\nX-Empty:\r\n\r\n"
    )
    fast = simple_header_items(block)
    assert fast is not None
    assert fast == stdlib_header_items(block)
    assert fast[3] == ("Subject", "Invoice\r\n\tquestion \udcc3\udca4")


def _raw_headers_by_rank(items: list[tuple[str, str]], limit: int) -> str:
    # raw_headers as first written: rank every line, keep greedily, restore the order.
    lines = []
    for index, (name, value) in enumerate(items):
        name = one_line(name).strip()
        if name and name.lower() not in _DROPPED:
            lines.append((_rank(name.lower()), index, f"{name}: {one_line(value).strip()}"))
    budget = limit + 2
    kept = []
    for _, index, line in sorted(lines):
        if len(line) + 2 <= budget:
            budget -= len(line) + 2
            kept.append((index, line))
    return "\r\n".join(line for _, line in sorted(kept))


HEADER_NAMES = ["Subject", "Received", "X-Other", "Content-Type", "ARC-Seal", " ", "From", "to"]


@given(
    st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), st.text(alphabet="ab \r\n\t\x00", max_size=30)),
        max_size=10,
    ),
    st.integers(0, 200),
)
def test_raw_headers_keeps_what_ranking_every_line_keeps(
    items: list[tuple[str, str]], limit: int
) -> None:
    assert raw_headers(items, limit) == _raw_headers_by_rank(items, limit)
