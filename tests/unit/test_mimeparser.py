"""read_mime's single-part tree is the tree the stdlib parser builds from the same bytes."""

from __future__ import annotations

import email
from email.message import Message
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.mimeheaders import header_block_end, simple_header_items, trim_header_block
from gateway.mimeparser import _MAILPARSER_HEADERS, _single_part_tree, read_mime

HEADERS = [
    b"From: <a@b.example>",
    b"To: x@y.example, z@w.example",
    b"Subject: hi \xc3\xa4",
    b"Content-Type: text/plain; charset=utf-8",
    b"Content-type: text/html",
    b"Content-Type: multipart/mixed; boundary=b",
    b"Content-Type: MESSAGE/rfc822",
    b"Content-Type: bogus",
    b"Content-Transfer-Encoding: base64",
    b"Content-Disposition: attachment; filename=a.txt",
    b"MIME-Version: 1.0",
    b"Received: from a by b",
    b"\tfolded \xff",
    b"",
    b"From x",
]
ENDINGS = [b"\r\n", b"\n", b"\r"]
BODIES = [
    b"",
    b"text\r\n",
    b"line\nline\r\n\r\n",
    b"\xe4\xff\x00 8-bit\r\n",
    b"--b\r\n\r\nx\r\n--b--",
]


def _state(message: Message) -> dict[str, Any]:
    """Everything the tree holds: its headers, payload, defects, preamble, policy..."""
    state = dict(vars(message))
    state["defects"] = [type(defect) for defect in message.defects]
    return state


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(HEADERS), st.sampled_from(ENDINGS)), max_size=6),
    st.sampled_from([b"\r\n", b"\n", b""]),
    st.lists(st.sampled_from(BODIES), max_size=3),
)
@example([(b"Content-Type: text/plain", b"\r\n")], b"\r\n", [b"x\r"])
@example([], b"\r\n", [b"text\r\n"])
@example([(b"From: <a@b.example>", b"\r"), (b"Received: x", b"\r\n"), (b"", b"\n")], b"", [])
def test_the_single_part_tree_equals_the_parsers(
    headers: list[tuple[bytes, bytes]], separator: bytes, body: list[bytes]
) -> None:
    raw = b"".join(line + ending for line, ending in headers) + separator + b"".join(body)
    end = header_block_end(raw)
    items = simple_header_items(raw[:end])
    if items is None:
        return
    assert read_mime(raw, items, end) == read_mime(raw)
    built = _single_part_tree(raw, items, end)
    if built is not None:  # None: the parser builds it (multipart, bare CR...)
        parsed = email.message_from_bytes(trim_header_block(raw, _MAILPARSER_HEADERS))
        assert _state(built) == _state(parsed)


def test_a_plain_message_takes_the_single_part_tree() -> None:
    raw = b"From: <a@b.example>\r\nSubject: x\r\n\r\nbody\r\n"
    end = header_block_end(raw)
    items = simple_header_items(raw[:end])
    assert items is not None
    built = _single_part_tree(raw, items, end)
    assert built is not None and built.get_payload() == "body\r\n"
