"""Bare LF / bare CR and SMTP smuggling (cf. aiosmtpd tests/test_smtpsmuggling.py and
aiosmtpd issue #561), over a raw socket so that no client library fixes the bytes."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from gateway import replies
from gateway.mail import find_bare_line_ending, normalize_line_endings

from .smtp_front_support import RawClient, RecordingProcessor, running_server, smtp_config

HEAD = b"From: a@example.net\r\nTo: b@example.com\r\nSubject: test\r\n\r\n"
# A second transaction hidden behind a non-standard end of data: a downstream that
# accepted <LF>.<LF> (or <CR>.<CR>) as the end would see two messages.
SMUGGLE_LF = (
    b"Testing\n.\nMAIL FROM:<evil@attacker.test>\nRCPT TO:<victim@example.com>\nDATA\n"
    b"Subject: smuggled\n\nSMUGGLED\n.\n"
)
SMUGGLE_CR = (
    b"Testing\r.\rMAIL FROM:<evil@attacker.test>\rRCPT TO:<victim@example.com>\rDATA\r"
    b"Subject: smuggled\r\rSMUGGLED\r.\r"
)
# aiosmtpd's own regression case: <LF>.<CR><LF> must not end the data.
SMUGGLE_LF_CRLF = b"Testing\n.\r\nNO SMUGGLING\r\n"


def _transaction(port: int, body: bytes) -> tuple[str, str]:
    """Send one message with ``body`` as-is (then the end of data); return the DATA reply and
    the reply to a following NOOP (proving no smuggled command got a reply of its own)."""
    raw = RawClient(port)
    try:
        raw.reply()
        raw.cmd("EHLO client.test")
        raw.cmd("MAIL FROM:<a@example.net>")
        raw.cmd("RCPT TO:<b@example.com>")
        assert raw.cmd("DATA").startswith("354")
        raw.send(HEAD + body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"))
        data_reply = raw.reply()
        return data_reply, raw.cmd("NOOP")
    finally:
        raw.close()


async def _run(mode: str, body: bytes) -> tuple[str, str, RecordingProcessor]:
    processor = RecordingProcessor()
    async with running_server(processor, smtp_config(bare_lf=mode)) as srv:
        data_reply, noop = await asyncio.to_thread(_transaction, srv.port, body)
    return data_reply, noop, processor


async def test_reject_mode_refuses_bare_lf_smuggling_with_550_5_6_11():
    """bare_lf=reject: <LF>.<LF> followed by a second transaction is one DATA answered
    550 5.6.11; nothing reaches the processor and no smuggled command gets a reply."""
    data_reply, noop, processor = await _run("reject", SMUGGLE_LF)
    assert data_reply == str(replies.BARE_LF) == "550 5.6.11 Bare LF not allowed"
    assert noop.startswith("250")
    assert processor.messages == []


async def test_reject_mode_refuses_bare_cr_smuggling():
    """bare_lf=reject: <CR>.<CR> smuggling is refused with 550 5.6.11 as well."""
    data_reply, noop, processor = await _run("reject", SMUGGLE_CR)
    assert data_reply == str(replies.BARE_CR)
    assert noop.startswith("250")
    assert processor.messages == []


async def test_reject_mode_refuses_lf_dot_crlf():
    """bare_lf=reject: aiosmtpd's own smuggling case <LF>.<CR><LF> is refused too."""
    data_reply, _, processor = await _run("reject", SMUGGLE_LF_CRLF)
    assert data_reply == str(replies.BARE_LF)
    assert processor.messages == []


async def test_normalize_mode_delivers_one_message_with_smuggled_lines_as_plain_text():
    """bare_lf=normalize: the smuggling attempt stays ONE message; every line ending is
    CRLF, the lone dots became empty lines (no line is a lone '.'), and the would-be
    commands are ordinary body lines."""
    data_reply, noop, processor = await _run("normalize", SMUGGLE_LF)
    assert data_reply.startswith("250 2.0.0")
    assert noop.startswith("250")
    assert len(processor.messages) == 1
    content = processor.messages[0].content
    assert content == HEAD + (
        b"Testing\r\n\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\n"
        b"DATA\r\nSubject: smuggled\r\n\r\nSMUGGLED\r\n\r\n\r\n"
    )
    assert b"." not in content.split(b"\r\n")
    assert find_bare_line_ending(content) is None


async def test_normalize_mode_handles_bare_cr_smuggling():
    """bare_lf=normalize: <CR>.<CR> smuggling also yields one CRLF-only message."""
    data_reply, _, processor = await _run("normalize", SMUGGLE_CR)
    assert data_reply.startswith("250 2.0.0")
    assert len(processor.messages) == 1
    content = processor.messages[0].content
    assert find_bare_line_ending(content) is None
    assert b"." not in content.split(b"\r\n")
    assert content.count(b"SMUGGLED") == 1


async def test_normalize_mode_removes_stuffing_dot_after_bare_lf_issue_561():
    """aiosmtpd #561: a dot-stuffed line after a bare LF keeps its stuffing dot; with
    normalize it is unstuffed like a line after CRLF ('..x' -> '.x' in both cases)."""
    body = b"line one\n..dotted after bare LF\r\n..dotted after CRLF\r\n"
    data_reply, _, processor = await _run("normalize", body)
    assert data_reply.startswith("250")
    assert processor.messages[0].content == HEAD + (
        b"line one\r\n.dotted after bare LF\r\n.dotted after CRLF\r\n"
    )


async def test_normalize_mode_passes_clean_crlf_message_byte_for_byte():
    """A message with only CRLF line endings is not touched by normalize."""
    body = b"Hello\r\n\r\n..leading dot\r\n8-bit \xc3\xa9 bytes\r\n"
    data_reply, _, processor = await _run("normalize", body)
    assert data_reply.startswith("250")
    assert (
        processor.messages[0].content
        == HEAD + b"Hello\r\n\r\n.leading dot\r\n8-bit \xc3\xa9 bytes\r\n"
    )


def test_normalize_examples():
    """normalize_line_endings on the corner cases: CR LF mixes, dots, CRLF untouched."""
    assert normalize_line_endings(b"a\r\nb\r\n") == b"a\r\nb\r\n"
    assert normalize_line_endings(b"a\nb\r\n") == b"a\r\nb\r\n"
    assert normalize_line_endings(b"a\rb\r\n") == b"a\r\nb\r\n"
    assert normalize_line_endings(b"a\r\r\n") == b"a\r\n\r\n"
    assert normalize_line_endings(b"a\n\r\n") == b"a\r\n\r\n"
    assert normalize_line_endings(b"a\n\rb\r\n") == b"a\r\n\r\nb\r\n"
    assert normalize_line_endings(b"a\n..b\r\n") == b"a\r\n.b\r\n"
    assert normalize_line_endings(b"a\n.\nb\r\n") == b"a\r\n\r\nb\r\n"
    assert normalize_line_endings(b".a\n.b\r\n") == b".a\r\nb\r\n"


def test_find_bare_line_ending_names_the_kind():
    """find_bare_line_ending: None for CRLF-only, 'LF' / 'CR' otherwise."""
    assert find_bare_line_ending(b"a\r\nb\r\n") is None
    assert find_bare_line_ending(b"a\nb\r\n") == "LF"
    assert find_bare_line_ending(b"a\rb\r\n") == "CR"
    assert find_bare_line_ending(b"") is None


@given(st.binary(max_size=200).map(lambda b: b.replace(b"x", b"\n").replace(b"y", b"\r")))
def test_normalized_content_never_has_bare_endings_and_is_stable(data: bytes):
    """For any bytes, normalize leaves no lone CR/LF, and normalizing twice changes nothing."""
    once = normalize_line_endings(data)
    assert find_bare_line_ending(once) is None
    assert normalize_line_endings(once) == once


async def test_normalize_mode_accepts_a_bare_lf_message_far_past_1000_octets():
    """bare_lf=normalize: a 200 KB message written with bare LF only (a run aiosmtpd sees as
    one line) is accepted and handed on with CRLF line endings, its text intact."""
    lines = [f"line {i:05d} of a Unix-written message".encode() for i in range(5000)]
    data_reply, _, processor = await _run("normalize", b"\n".join(lines) + b"\n")
    assert data_reply.startswith("250 2.0.0")
    content = processor.messages[0].content
    # _transaction ends a body without a final CRLF with "\r\n.\r\n": one empty line more.
    assert content == HEAD + b"\r\n".join(lines) + b"\r\n\r\n"


async def test_a_5000_octet_line_is_accepted_and_handed_on_unchanged():
    """A line past RFC 5322's 998 octets (Postfix accepts them) is accepted, not split:
    splitting would break a DKIM signature over the body."""
    long_line = b"x" * 5000 + b"\r\n"
    data_reply, _, processor = await _run("reject", long_line)
    assert data_reply.startswith("250 2.0.0")
    assert processor.messages[0].content == HEAD + long_line
