"""read_mime's shortcuts for a single-part message give what the stdlib parser and
mail-parser give: the same tree, the same defects."""

from __future__ import annotations

import email
from email.message import Message
from typing import Any
from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.mail import _mimeparser as mimeparser
from gateway.mail._mimeheaders import header_block_end, simple_header_items, trim_header_block
from gateway.mail._mimeparser import (
    _MAILPARSER_HEADERS,
    _single_part_tree,
    _text_part_categories,
    read_mime,
)

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


CONTENT_TYPES = [
    None,
    b"text/plain",
    b"text/plain; charset=utf-8",
    b'TEXT/HTML; charset="ISO-8859-1"',
    b"text/plain; charset=windows-1252",
    b"text/plain; charset=us-ascii",
    b"text/plain; charset=iso-8859-15",
    b"text/plain; charset=shift_jis",
    b"text/plain; charset=x-bogus",
    b"text/plain; charset*=utf-8''%E4",
    b"text/plain; name=a.txt",
    b"text/rtf",
    b"application/octet-stream",
    b"text/plain; charset=\xe4",
    b"text/plain; charset==?utf-8?q?x?=",
]
ENCODINGS = [
    None,
    b"7bit",
    b"8BIT ",
    b"base64",
    b"quoted-printable",
    b"x-uuencode",
    b"bogus",
    b"\xff",
]
TEXT_BODIES = [
    b"",
    b"plain ascii\r\n",
    b"caf\xc3\xa9 utf-8\r\n",
    b"caf\xe9 latin-1\r\n",
    b"\x81\x8d\x8f\x90\x9d undefined in cp1252\r\n",
    b"Y2Fm6Q==\r\n",
    b"Y2Fm\r\n",
    b"=E4=\r\nx=C3=A4\r\n",
    b"=?utf-8?q?x?=\r\n",
]
EXTRA = [b"MIME-Version: 1.0", b"Content-Disposition: inline", b"From: <a@b.example>", b"To: x"]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(CONTENT_TYPES),
    st.sampled_from(ENCODINGS),
    st.lists(st.sampled_from(EXTRA), max_size=2),
    st.lists(st.sampled_from(TEXT_BODIES), max_size=2),
)
@example(b"text/plain; charset=utf-8", b"8bit", [], [b"caf\xe9 latin-1\r\n"])
@example(None, b"base64", [], [b"Y2Fm\r\n"])
def test_a_text_part_gets_mail_parsers_defects(
    ctype: bytes | None, encoding: bytes | None, extra: list[bytes], body: list[bytes]
) -> None:
    head = [b"Subject: s", *extra]
    if ctype is not None:
        head.append(b"Content-Type: " + ctype)
    if encoding is not None:
        head.append(b"Content-Transfer-Encoding: " + encoding)
    raw = b"".join(line + b"\r\n" for line in head) + b"\r\n" + b"".join(body)
    end = header_block_end(raw)
    items = simple_header_items(raw[:end])
    assert items is not None
    fast = read_mime(raw, items, end)
    with mock.patch.object(mimeparser, "_text_part_categories", lambda _message: None):
        asked = read_mime(raw, items, end)
    assert fast == asked


def test_a_utf8_text_part_skips_mail_parser() -> None:
    raw = b"Content-Type: text/plain; charset=utf-8\r\n\r\ncaf\xc3\xa9\r\n"
    end = header_block_end(raw)
    tree = _single_part_tree(raw, simple_header_items(raw[:end]) or [], end)
    assert tree is not None
    assert _text_part_categories(tree) == set()
