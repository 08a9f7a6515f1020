"""Header surgery: safe values, prepending, stripping and the subject prefix."""

from __future__ import annotations

from email.header import decode_header, make_header

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway import redact
from gateway.mail import (
    header_block,
    header_fields,
    prefix_subject,
    prepend_headers,
    safe_header_value,
    strip_headers,
)
from gateway.mail._headers import (
    MAX_HEADER_BYTES,
    _clean,
    _fit,
    _fold_ascii,
    _fold_words,
    valid_header_name,
)
from gateway.testing import isolated_secrets

BODY = (
    b"Body line one\r\n"
    b"X-CM-Status: classified\r\n"
    b"Subject: not a header\r\n"
    b"\r\n"
    b"tail with 8-bit \xc3\xa9 bytes and a bare \n LF\r\n"
)
MESSAGE = (
    b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"X-CM-Status: classified\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"X-CM-Labels: Finance > Invoice (0.99),\r\n"
    b"\tUrgent (0.98)\r\n"
    b"Subject: Hello\r\n"
    b"  world\r\n"
    b"x-cm-rules: forged\r\n"
    b"X-Cmd: not ours\r\n"
    b"\r\n" + BODY
)


def decoded(value: str) -> str:
    """What a reader of the header sees: unfolded and RFC 2047-decoded."""
    return str(make_header(decode_header(value.replace("\r\n", ""))))


def lines_of(name: str, value: str) -> list[str]:
    return f"{name}: {value}".split("\r\n")


@pytest.mark.parametrize(
    "hostile",
    [
        "Finance\r\nBcc: evil@example.com",
        "Finance\nX-CM-Status: classified",
        "Finance\rInvoice",
        "Fin\x00ance",
        "Fin\x1b[31mance\x7f",
        "Fin\u2028ance\u0085",
    ],
)
def test_safe_header_value_removes_line_breaks_and_controls(hostile: str) -> None:
    """CR, LF, NUL and other control characters from the API never reach the wire."""
    value = safe_header_value(hostile)
    unfolded = value.replace("\r\n ", " ")
    assert value.isascii()
    assert not any(ord(c) < 32 or ord(c) == 127 for c in unfolded)
    assert all(line.startswith(" ") for line in value.split("\r\n")[1:])


def test_safe_header_value_keeps_plain_ascii_readable() -> None:
    """An ASCII label summary is written as it is, not encoded."""
    assert safe_header_value("Finance > Invoice (0.92), Urgent (0.66)") == (
        "Finance > Invoice (0.92), Urgent (0.66)"
    )


@pytest.mark.parametrize(
    "text", ["Ürgent > Rückerstattung (0.91)", "請求書 (0.80)", "emoji 📧 label", "ça va"]
)
def test_safe_header_value_encodes_non_ascii_as_rfc2047(text: str) -> None:
    """Non-ASCII text becomes UTF-8 encoded-words that decode back to the same text."""
    value = safe_header_value(text)
    assert value.isascii()
    assert "=?utf-8?" in value
    assert decoded(value) == text


def test_safe_header_value_folds_a_5000_character_label_list() -> None:
    """A huge label list is folded: no line over 998 octets, most within 78, size capped."""
    labels = ", ".join(f"Category{i} > Subcategory{i} (0.{i % 90 + 10})" for i in range(200))
    assert len(labels) > 5000
    value = safe_header_value(labels, name="X-CM-Labels")
    lines = lines_of("X-CM-Labels", value)
    assert max(len(line) for line in lines) <= 78
    assert len("X-CM-Labels: ") + len(value) <= MAX_HEADER_BYTES
    assert all(line.startswith(" ") for line in lines[1:])
    assert value.replace("\r\n ", " ").startswith(labels[:500])


def test_safe_header_value_truncates_on_a_list_boundary() -> None:
    """Past the size cap the value is cut after a whole entry and marked with ' ...'."""
    labels = ", ".join(f"Label{i} (0.50)" for i in range(2000))
    text = decoded(safe_header_value(labels))
    assert text.endswith(" ...")
    assert text.removesuffix(" ...").endswith("(0.50)")
    assert labels.startswith(text.removesuffix(" ..."))


def test_safe_header_value_splits_a_token_longer_than_998() -> None:
    """A 3,000-character word without spaces is written as encoded-words, not one long line."""
    word = "x" * 3000
    value = safe_header_value(word)
    assert max(len(line) for line in lines_of("X-CM-Labels", value)) <= 78
    assert decoded(value) == word
    longer = decoded(safe_header_value("y" * 5000))  # past the size cap: cut and marked
    assert longer.endswith(" ...") and set(longer.removesuffix(" ...")) == {"y"}


def test_safe_header_value_non_ascii_5000_characters_stays_within_limits() -> None:
    """Multibyte text is capped by its encoded size, with lines short."""
    value = safe_header_value("ü" * 5000)
    assert len(value) <= MAX_HEADER_BYTES
    assert max(len(line) for line in lines_of("X-CM-Labels", value)) <= 78
    assert set(decoded(value).removesuffix(" ...")) == {"ü"}


def test_safe_header_value_twice_decodes_to_the_same_text() -> None:
    """Sanitising an already safe value changes nothing a reader can see."""
    for text in ("Ünïcode > Label (0.92)", "plain " * 40, "y" * 2000):
        once = safe_header_value(text)
        assert decoded(safe_header_value(once)) == decoded(once)


# Plain ASCII words joined by spaces, always past 998 octets: values that only folding at
# the spaces keeps within the limit (st.text almost never draws one).
_SPACED_ASCII = st.lists(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=4, max_size=40
    ),
    min_size=200,
    max_size=400,
).map(" ".join)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(st.text(max_size=2000), _SPACED_ASCII),
    st.sampled_from(["X-CM-Labels", "X", "X-Triage-Queue-Long-Name"]),
)
@example("word " * 300, "X-CM-Labels")
def test_safe_header_value_is_always_wire_safe(text: str, name: str) -> None:
    """For any text: ASCII, folds only as CRLF+space, every line within 998 octets."""
    value = safe_header_value(text, name=name)
    assert value.isascii()
    assert "\x00" not in value
    lines = lines_of(name, value)
    assert all(len(line) <= 998 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])
    assert all("\r" not in line and "\n" not in line for line in lines)


# Texts the fast paths see: plain ASCII words (some long), single or double spaces, and
# now and then a control character, a non-ASCII letter or a registered secret.
_WORDISH = st.text(alphabet=st.sampled_from("ab,;>()0.9 \t\u00e9\x00"), max_size=200)
_PLAINISH = st.lists(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=95),
    max_size=30,
).map(" ".join)
_NAMES = st.sampled_from(["X-CM-Labels", "X", "Received", "X-" + "N" * 74, "Y" * 90])
_SECRET = "hdr-secret-0123456789"


@settings(max_examples=300, deadline=None)
@given(st.one_of(_PLAINISH, _WORDISH, st.text(max_size=300)), _NAMES)
@example("Finance > Invoice (0.92), Urgent (0.66)", "X-CM-Labels")
@example("x" * 64, "X-CM-Labels")  # exactly 78 columns with "X-CM-Labels: "
@example("x" * 65, "X-CM-Labels")
@example(f"label {_SECRET}", "X-CM-Labels")
@example("", "X")
def test_safe_header_value_fast_path_equals_the_full_path(text: str, name: str) -> None:
    """A short plain ASCII value is returned before cleaning, encoding and folding: the
    full path gives the same string for every value."""
    with isolated_secrets(_SECRET):
        assert safe_header_value(text, name=name) == _fit(_clean(redact.scrub(text)), name)
        assert _SECRET not in safe_header_value(text, name=name)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_PLAINISH, _WORDISH), st.integers(min_value=0, max_value=100))
@example("a " * 40 + "b", 13)
@example("x" * 100 + " y", 10)
@example("y " + "x" * 100, 80)
def test_fold_by_rfind_equals_folding_word_by_word(text: str, first_width: int) -> None:
    """The rfind fold gives the lines the word-by-word greedy fold gives."""
    assert _fold_ascii(text, first_width) == _fold_words(text, first_width)


@pytest.mark.parametrize("name", ["X-CM-Labels", "X-Triage-Queue", "Subject"])
def test_valid_header_name_accepts_ftext(name: str) -> None:
    """Ordinary field names are accepted."""
    assert valid_header_name(name)


@pytest.mark.parametrize("name", ["", "X-CM Labels", "X:Y", "X-\u00e9", "X\r\nBcc", "X" * 77])
def test_valid_header_name_refuses_what_rfc5322_does_not_allow(name: str) -> None:
    """Spaces, colons, non-ASCII, controls and over-long names are refused."""
    assert not valid_header_name(name)


def test_prepend_headers_keeps_the_message_byte_for_byte() -> None:
    """New fields go on top; the original bytes follow unchanged."""
    out = prepend_headers(MESSAGE, [("X-CM-Model", "7"), ("X-CM-Status", "classified")])
    assert out == b"X-CM-Model: 7\r\nX-CM-Status: classified\r\n" + MESSAGE


def test_prepend_headers_sanitises_values() -> None:
    """A value with CR/LF cannot start a second header field."""
    out = prepend_headers(MESSAGE, [("X-CM-Labels", "A\r\nBcc: evil@example.com")])
    first = out.split(b"\r\n")[0]
    assert first == b"X-CM-Labels: A Bcc: evil@example.com"
    assert out.endswith(MESSAGE)


def test_prepend_headers_refuses_an_invalid_name() -> None:
    """A field name with a space or colon raises instead of writing garbage."""
    with pytest.raises(ValueError):
        prepend_headers(MESSAGE, [("Bad Name", "x")])


def test_prepend_headers_follows_lf_line_endings() -> None:
    """A message stored with LF line endings gets LF-terminated new fields."""
    raw = b"Subject: hi\n\nbody\n"
    out = prepend_headers(raw, [("X-CM-Labels", "é " * 60)])
    assert b"\r" not in out
    assert out.endswith(raw)


def test_strip_headers_removes_fields_with_their_continuations() -> None:
    """Every X-CM-* field goes, case-insensitively, folded lines included; nothing else changes."""
    out = strip_headers(MESSAGE)
    assert out == (
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"From: Alice <alice@example.com>\r\n"
        b"Subject: Hello\r\n"
        b"  world\r\n"
        b"X-Cmd: not ours\r\n"
        b"\r\n" + BODY
    )


def test_strip_headers_leaves_a_body_with_x_cm_lines_alone() -> None:
    """X-CM-* lines in the body are text, not header fields."""
    raw = b"Subject: x\r\n\r\nX-CM-Status: classified\r\n"
    assert strip_headers(raw) is raw


def test_strip_headers_without_a_body() -> None:
    """A message that is only a header block is handled."""
    assert strip_headers(b"X-CM-A: 1\r\nSubject: s\r\n") == b"Subject: s\r\n"


def test_header_block_stops_at_the_first_empty_line() -> None:
    """The header block ends before the first empty line; LF-only messages work too."""
    assert header_block(MESSAGE).endswith(b"x-cm-rules: forged\r\nX-Cmd: not ours\r\n")
    assert header_block(b"A: 1\n\nB: 2\n") == b"A: 1\n"


def test_header_fields_decodes_and_unfolds() -> None:
    """The light reader returns names as written and decoded values."""
    fields = header_fields(MESSAGE)
    assert ("Subject", "Hello  world") in fields
    assert ("X-CM-Labels", "Finance > Invoice (0.99),\tUrgent (0.98)") in fields


def test_prefix_subject_prefixes_once() -> None:
    """Prefixing twice gives the same bytes as prefixing once."""
    once = prefix_subject(MESSAGE, "[Complaint] ")
    assert once == prefix_subject(once, "[Complaint] ")
    assert b"Subject: [Complaint] Hello world\r\n" in once


def test_prefix_subject_changes_only_the_subject() -> None:
    """Everything but the Subject field stays byte for byte, body included."""
    out = prefix_subject(MESSAGE, "[T] ")
    before, _, after = MESSAGE.partition(b"Subject: Hello\r\n  world\r\n")
    assert out == before + b"Subject: [T] Hello world\r\n" + after


def test_prefix_subject_decodes_and_reencodes_encoded_words() -> None:
    """An encoded-word subject is decoded, prefixed, and written back as encoded-words."""
    raw = b"From: a@example.com\r\nSubject: =?iso-8859-1?q?Caf=E9?= ouvert\r\n\r\nbody\r\n"
    out = prefix_subject(raw, "[Info] ")
    subject = [v for n, v in header_fields(out) if n == "Subject"]
    assert subject == ["[Info] Café ouvert"]
    assert out.isascii()
    assert prefix_subject(out, "[Info] ") == out
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_prefix_subject_handles_raw_utf8_subjects() -> None:
    """A raw UTF-8 subject (SMTPUTF8 mail) is re-encoded as encoded-words."""
    raw = "Subject: Grüße\r\n\r\nx\r\n".encode()
    out = prefix_subject(raw, "[T] ")
    assert dict(header_fields(out))["Subject"] == "[T] Grüße"


def test_prefix_subject_adds_a_missing_subject() -> None:
    """A message without a Subject gets one carrying the prefix."""
    raw = b"From: a@example.com\r\n\r\nbody\r\n"
    out = prefix_subject(raw, "[Urgent] ")
    assert out == b"Subject: [Urgent]\r\n" + raw
    assert prefix_subject(out, "[Urgent] ") == out


def test_prefix_subject_sees_the_prefix_behind_reply_markers() -> None:
    """'Re: [T] x' already carries '[T] ': no second tag (the rules engine's semantics)."""
    raw = b"Subject: Re: [T] hello\r\n\r\nbody\r\n"
    assert prefix_subject(raw, "[T] ") is raw


def test_safe_header_value_survives_lone_surrogates() -> None:
    """A lone surrogate (possible in JSON from the API) becomes '?', not invalid UTF-8."""
    value = safe_header_value("Label \ud800 x é")
    assert decoded(value) == "Label ? x é"
