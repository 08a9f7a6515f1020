"""Fuzzing the payload builder (issue 6, item 4): hostile MIME written byte by byte.

``tests/unit/test_payload_properties.py`` feeds random bytes and MIME trees built with
the stdlib ``email`` package. This file writes the message bytes itself, so it can do
what a generator refuses to: header values with raw CR, LF and NUL, invalid UTF-8 and
8-bit bytes, broken encoded-words and RFC 2231 parameters, boundaries that are empty,
quoted, 200 characters long, equal to or a prefix of the parent's, missing closing
delimiters, preambles and epilogues of junk, nesting past the container limit.

For every input: ``parse_message`` raises nothing and reports no unexpected internal
error; ``build_document`` gives a document (not the last-resort fallback) that the
emulator's strict validator accepts, that serialises to strict UTF-8 JSON (no lone
surrogates, no NaN) as the HTTP client sends it, and the same one twice (same hash).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway.documents import RawEmailDocument, document_hash
from gateway.emulator import validate_predict_raw_emails
from gateway.mail import build_document, parse_message

SOAK = bool(os.environ.get("CMGW_SOAK"))
# Internal errors parse_message may report as a defect: the deep-nesting guard only.
# (mail-parser's own failures are "MailParserError:<type>", and the stdlib tree is then
# walked instead: see the evasion test below.)
EXPECTED_ERRORS = {"ParseError:RecursionError"}
PROPERTIES: dict[str, str | float] = {"string:Source": "fuzz", "number:Priority": 2}


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # a shared, slow machine: wall-clock deadlines would be flaky
        # No "explain" phase: its tracer makes shrinking a MIME tree take minutes.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


FAST = _settings(1000 if SOAK else 40)
LONG = _settings(10_000)


def check_payload(raw: bytes, marker: bytes | None = None) -> RawEmailDocument:
    """Assert everything the payload contract promises for ``raw``."""
    parsed = parse_message(raw)
    unexpected = [d for d in parsed.defects if d.startswith("ParseError:")]
    assert set(unexpected) <= EXPECTED_ERRORS, f"internal error while parsing: {unexpected}"
    doc = build_document(parsed, raw, user_properties=PROPERTIES, mailbox="inbox@acme.example")
    # build_document's last resort (an exception inside it) has no user_properties.
    assert "user_properties" in doc, "build_document fell back to the empty document"
    validate_predict_raw_emails({"documents": [doc], "transform_tag": "generic.0.CONVKER5"})
    wire = json.dumps(
        {"documents": [doc]}, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")  # strict: a lone surrogate would raise here, as in the client
    assert json.loads(wire)["documents"][0] == doc
    again = build_document(
        parse_message(raw), raw, user_properties=PROPERTIES, mailbox="inbox@acme.example"
    )
    assert document_hash(again) == document_hash(doc), "the same bytes gave another document"
    if marker is not None:
        assert marker.decode() in doc["raw_email"]["headers"]["raw"], "Subject lost"
    return doc


NASTY = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"\x00", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xe9", b"\t",
     b" ", b";", b'"', b"=?", b"?=", b"=?utf-8?b?", b"=?x-unknown?q?=FF=00?=", b"=?utf-8?b?!!!?=",
     b"=?utf-16?b?2D3e?=", b"\\", b"(", b")", b"<", b">", b",", b"\x1b", "\u2028".encode()]
)  # fmt: skip
WORDS = st.binary(max_size=12) | st.sampled_from([b"text", b"plain", b"boundary", b"x" * 300])
values = st.lists(NASTY | WORDS, max_size=10).map(b"".join)
NAMES = st.sampled_from(
    [b"Subject", b"From", b"To", b"Cc", b"Message-ID", b"Date", b"Content-Type",
     b"Content-Transfer-Encoding", b"Content-Disposition", b"MIME-Version", b"X-Junk",
     b"Received", b"Auto-Submitted", b"Reply-To", b"", b" ", b"Bad Name", b"\xff\xfe"]
)  # fmt: skip
TYPES = [b"text/plain", b"text/html", b"application/pdf", b"image/png", b"message/rfc822",
         b"text/x-bogus", b"", b"multipart/mixed"]  # fmt: skip
CHARSETS = [b"utf-8", b"iso-8859-1", b"utf-16", b"utf-7", b"shift_jis", b"x-bogus", b"", b'"']
ENCODINGS = [b"7bit", b"8bit", b"base64", b"quoted-printable", b"x-uuencode", b"bogus", b""]


@st.composite
def junk_headers(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        name, value = draw(NAMES), draw(values)
        sep = draw(st.sampled_from([b": ", b":", b" : ", b""]))
        fold = draw(st.sampled_from([b"", b"\r\n ", b"\r\n\t", b"\n ", b"\r\n"]))
        lines.append(name + sep + value + fold + draw(values))
    return b"".join(line + b"\r\n" for line in lines)


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    head = b"Content-Type: " + ctype + b"; charset=" + charset
    if draw(st.booleans()):
        head += b"; name*0*=utf-8''%FF%00%C3; name*1=" + draw(values)
    head += b"\r\nContent-Transfer-Encoding: " + draw(st.sampled_from(ENCODINGS)) + b"\r\n"
    if draw(st.booleans()):
        head += b'Content-Disposition: attachment; filename="' + draw(values) + b'"\r\n'
    body = draw(st.binary(max_size=200) | values)
    return head + draw(junk_headers()) + b"\r\n" + body


def boundaries(parent: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from(
        [b"b1", b"", b'"quoted b"', b"x" * 200, parent, parent[:3], parent + b"x", b"==", b"b 1"]
    )


def multipart(depth: int, parent: bytes = b"outer") -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        boundary = draw(boundaries(parent))
        raw_boundary = boundary.strip(b'"')
        subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related", b"digest"]))
        head = b"Content-Type: multipart/" + subtype + b"; boundary=" + boundary + b"\r\n"
        if draw(st.booleans()):
            head += b"Content-Transfer-Encoding: " + draw(st.sampled_from(ENCODINGS)) + b"\r\n"
        children = draw(
            st.lists(
                leaf() if depth <= 0 else (leaf() | multipart(depth - 1, raw_boundary)),
                max_size=4,
            )
        )
        parts = b"".join(
            b"--"
            + raw_boundary
            + draw(st.sampled_from([b"", b"  ", b"\t"]))
            + b"\r\n"
            + c
            + b"\r\n"
            for c in children
        )
        close = draw(
            st.sampled_from([b"--" + raw_boundary + b"--\r\n", b"", b"--" + raw_boundary + b"\r\n"])
        )
        return head + b"\r\n" + draw(values) + b"\r\n" + parts + close + draw(values)

    return build()


@st.composite
def hostile_messages(draw: st.DrawFn) -> tuple[bytes, bytes]:
    marker = b"fuzz-%d" % draw(st.integers(0, 10**6))
    body = draw(leaf() | multipart(draw(st.integers(0, 3))))
    raw = b"Subject: " + marker + b"\r\n" + draw(junk_headers()) + body
    if draw(st.booleans()):
        raw = raw.replace(b"\r\n", b"\n")
    return raw, marker


@FAST
@given(message=hostile_messages())
def test_hostile_mime_bytes_always_give_a_valid_document(message: tuple[bytes, bytes]) -> None:
    """Byte-level hostile MIME: no internal error, a valid, stable, UTF-8 JSON document."""
    raw, marker = message
    check_payload(raw, marker)


@settings(FAST, max_examples=min(FAST.max_examples, 60))
@given(head=junk_headers(), tail=st.binary(max_size=3000))
def test_junk_headers_over_random_bytes_always_give_a_valid_document(
    head: bytes, tail: bytes
) -> None:
    """Junk header lines (CR, LF, NUL, 8-bit, broken encoded-words) over random bytes."""
    check_payload(b"Subject: fuzz-head\r\n" + head + tail, b"fuzz-head")


def test_text_next_to_a_part_that_breaks_mail_parser_is_still_classified() -> None:
    """An empty boundary makes mail-parser raise; the body text still reaches the document
    (found by this fuzzer: the body was dropped, so a sender could evade the classifier)."""
    raw = (
        b"Subject: fuzz-evasion\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n\r\n--\r\n"
        b"Content-Type: text/plain\r\n\r\nPlease pay invoice INV-2041 now\r\n--\r\n"
        b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n\r\n--b1--\r\n\r\n"
    )
    doc = check_payload(raw, b"fuzz-evasion")
    assert "INV-2041" in doc["raw_email"]["body"].get("plain", "")


@pytest.mark.parametrize("depth", [100, 255, 300])
@pytest.mark.parametrize("kind", ["multipart", "rfc822"])
def test_nesting_around_the_container_limit_gives_a_valid_document(depth: int, kind: str) -> None:
    """Containers nested 100, 255 and 300 deep (the limit is 256): still a valid document."""
    raw = b""
    for level in range(depth):
        if kind == "multipart":
            raw += b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
        else:
            raw += b"Content-Type: message/rfc822\r\n\r\n"
    raw += b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    check_payload(b"Subject: fuzz-deep\r\n" + raw, b"fuzz-deep")


@pytest.mark.soak
@LONG
@given(message=hostile_messages())
def test_soak_hostile_mime_bytes_always_give_a_valid_document(
    message: tuple[bytes, bytes],
) -> None:
    """The long profile: 10,000 hostile messages."""
    raw, marker = message
    check_payload(raw, marker)
