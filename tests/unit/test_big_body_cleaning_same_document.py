"""A big body is cleaned in pieces, and only its head when that decides the document: the
documents, texts and checks stay exactly what the one-pass code gave (the one-pass
functions, copied below as they were, are the oracles)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.context import Attachment
from gateway.documents import (
    MAX_HTML,
    MAX_PLAIN,
    MAX_RAW_HEADERS,
    RawEmailBody,
    RawEmailDocument,
    document_hash,
)
from gateway.mail import ParsedMessage, build_document, parse_message
from gateway.mail import _limits as limits
from gateway.mail import _payload as payload
from gateway.mail._mimeheaders import raw_headers
from gateway.mail._mimetext import clean_text, fix_surrogates, has_surrogates, truncate_text
from gateway.mail._payload import body_text

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# What cleaning touches: line endings, NULs, surrogates (escaped bytes and others),
# non-ASCII, combining marks (truncate_text keeps them with their base).
SPECIAL = st.sampled_from(
    ["\r", "\n", "\r\n", "\x00", "a", " ", "\xe9", "\u0301", "\u200d", "\udce4", "\udcff",
     "\ud800", "\U0001f600", "\ufe0f"]
)  # fmt: skip
ORDINARY = st.sampled_from(["a", " ", "\r\n", "\n", "\xe9", "\u0301", "\x00", "\r"])


# --- the oracles: the code as it was before the pieces ------------------------------


def old_clean_text(text: str) -> str:
    text = fix_surrogates(text)
    if "\x00" in text:
        text = text.replace("\x00", "")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def old_has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_OLD_CONTAINER = re.compile(rb"boundary\s*\*?[0-9]*\*?\s*=|message/")


def old_too_many_containers(raw: bytes) -> bool:
    lowered = raw.lower()
    if lowered.count(b"boundary") + lowered.count(b"message/") <= 256:
        return False
    found = _OLD_CONTAINER.finditer(lowered)
    return sum(1 for _ in itertools.islice(found, 257)) > 256


def old_build(parsed: ParsedMessage, raw: bytes) -> RawEmailDocument:
    # payload._build before body_text, with its (unchanged) helpers.
    items = payload._header_items(parsed, raw)
    if not items:
        items = list(parsed.headers)
    body: RawEmailBody = {}
    if parsed.text_plain is not None:
        body["plain"] = truncate_text(old_clean_text(parsed.text_plain), MAX_PLAIN)
    if parsed.text_html is not None:
        body["html"] = truncate_text(old_clean_text(parsed.text_html), MAX_HTML)
    if not body:
        body["plain"] = ""
    document: RawEmailDocument = {
        "raw_email": {
            "headers": {"raw": raw_headers(items, MAX_RAW_HEADERS)},
            "body": body,
            "attachments": [payload._attachment(a) for a in parsed.attachments[:128]],
        },
        "user_properties": payload._user_properties(parsed, {}, None),
    }
    comment_id = payload._comment_id(parsed.message_id)
    if comment_id is not None:
        document["comment_id"] = comment_id
    return document


# --- the properties -----------------------------------------------------------------


@SETTINGS
@given(st.lists(SPECIAL, max_size=80).map("".join), st.integers(1, 9))
@example("a\r\x00\nb", 2)
@example("\r\r\n\n\r", 1)
@example("ab\r\ncd", 2)
def test_cleaning_in_pieces_gives_the_one_pass_text(text: str, piece: int) -> None:
    """Wherever the pieces are cut (a CR/LF pair, NULs, surrogates), the text is the
    same as cleaning it in one pass."""
    assert clean_text(text, piece=piece) == old_clean_text(text)
    assert clean_text(text) == old_clean_text(text)


@SETTINGS
@given(st.lists(SPECIAL, max_size=80).map("".join), st.integers(1, 9))
def test_surrogates_are_found_in_pieces_as_by_encoding(text: str, piece: int) -> None:
    """``has_surrogates`` in pieces says what a failed UTF-8 encode says."""
    assert has_surrogates(text, piece) == old_has_surrogates(text)


@SETTINGS
@given(st.lists(SPECIAL, max_size=120).map("".join), st.integers(0, 40))
@example("\r\n" * 10, 4)
@example("\x00" * 30 + "abc", 2)
@example("a\r\n" * 5 + "\u0301" * 3, 5)
def test_the_body_text_is_the_truncated_one_pass_cleaning(text: str, limit: int) -> None:
    """For every text and limit, cleaning the head only (when it decides) gives what
    cleaning all of it, then truncating, gave."""
    assert body_text(text, limit) == truncate_text(old_clean_text(text), limit)


@st.composite
def big_bodies(draw: st.DrawFn) -> str:
    """Over 2 x MAX_PLAIN characters (the head path), with odd characters drawn at the
    places that decide: around MAX_PLAIN, and around the head's end."""
    unit = "".join(draw(st.lists(ORDINARY, min_size=1, max_size=12)))
    length = draw(st.integers(2 * MAX_PLAIN - 50, 2 * MAX_PLAIN + 80))
    text = (unit * (length // len(unit) + 1))[:length]
    for _ in range(draw(st.integers(0, 4))):
        at = draw(
            st.sampled_from([MAX_PLAIN, MAX_PLAIN // 2, 2 * MAX_PLAIN + 2, length])
            | st.integers(0, length)
        )
        at += draw(st.integers(-3, 3))
        at = min(max(at, 0), len(text))
        text = text[:at] + "".join(draw(st.lists(SPECIAL, max_size=6))) + text[at:]
    return text


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(big_bodies(), big_bodies() | st.none())
def test_a_big_body_gives_the_same_document(plain: str, html: str | None) -> None:
    """build_document of a message with a body over twice MAX_PLAIN: the same document
    as the one-pass build, byte for byte."""
    raw = b"Subject: big\r\nMessage-ID: <big@x.example>\r\n\r\nbody\r\n"
    parsed = parse_message(raw)
    parsed = ParsedMessage(
        headers=parsed.headers,
        subject=parsed.subject,
        message_id=parsed.message_id,
        from_addresses=(),
        to_addresses=(),
        text_plain=plain,
        text_html=html,
        attachments=(Attachment("a.pdf", "application/pdf", 10),),
        size=len(plain),
        defects=(),
        header_block=parsed.header_block,
        header_items=parsed.header_items,
    )
    assert build_document(parsed, raw) == old_build(parsed, raw)
    assert document_hash(build_document(parsed, raw)) == document_hash(old_build(parsed, raw))


CONTAINER_PARTS = st.sampled_from(
    [b"boundary", b"BoUnDaRy", b"message/", b"MESSAGE/", b"bound", b"ary", b"messag", b"e/",
     b"=", b" ", b"x", b"\r\n", b"boundary*0*=", b"boundary =\"q\""]
)  # fmt: skip


@SETTINGS
@given(st.lists(CONTAINER_PARTS, max_size=40), st.integers(0, 300), st.integers(1, 24))
def test_containers_counted_in_windows_as_in_one_pass(
    parts: list[bytes], repeat: int, window: int
) -> None:
    """The container limit decides the same in windows of any size (names cut at a
    window's end included) as over one lower-cased copy."""
    raw = b"".join(parts) * (repeat if parts else 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limits, "_WINDOW", window)
        small = limits.too_many_containers(raw)
    assert small == old_too_many_containers(raw)
    assert limits.too_many_containers(raw) == old_too_many_containers(raw)


def test_a_9_mb_body_is_sent_as_before() -> None:
    """The smtp-source-like 9 MB message of the stall measurement: its document is the
    one-pass document."""
    line = b"La de da de da 1. La de da de da 2. La de da de da 3.\r\n"
    raw = b"Subject: big\r\nContent-Type: text/plain\r\n\r\n" + line * (9 * 2**20 // len(line))
    parsed = parse_message(raw)
    assert parsed.text_plain is not None and len(parsed.text_plain) > 8 * 2**20
    assert build_document(parsed, raw) == old_build(parsed, raw)
