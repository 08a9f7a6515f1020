"""Raw message -> predict-raw-emails document, on the shared fixture corpus."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
import sys
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.documents import (
    MAX_ATTACHMENT_FIELD,
    MAX_ATTACHMENTS,
    MAX_HTML,
    MAX_PLAIN,
    MAX_RAW_HEADERS,
    RawEmailDocument,
    document_hash,
)
from gateway.mail import ParsedMessage, build_document, parse_message
from gateway.mail._mimeheaders import header_items

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.eml"))
COMMENT_ID = re.compile(r"[\w\x21-\x2e\x3a-\x40\x5b-\x60\x7b-\x7e]{1,1024}", re.ASCII)
HEADER_LINE = re.compile(r"[\x21-\x39\x3b-\x7e]+: [^\r\n]*")
T = TypeVar("T")


def check_document(doc: RawEmailDocument) -> None:
    """Our own reading of the API limits (cm-api.md §2), independent of the emulator."""
    assert set(doc) <= {"raw_email", "user_properties", "comment_id"}
    email = doc["raw_email"]
    assert set(email) <= {"headers", "body", "attachments"}
    assert set(email["headers"]) == {"raw"}
    raw = email["headers"]["raw"]
    assert isinstance(raw, str) and len(raw) <= MAX_RAW_HEADERS
    if raw:
        for line in raw.split("\r\n"):
            assert HEADER_LINE.fullmatch(line), f"not one whole header line: {line[:80]!r}"
            name = line.split(":", 1)[0].lower()
            assert name not in ("content-type", "content-transfer-encoding")
    body = email["body"]
    assert body and set(body) <= {"plain", "html"}
    assert isinstance(body.get("plain", ""), str) and len(body.get("plain", "")) <= MAX_PLAIN
    assert isinstance(body.get("html", ""), str) and len(body.get("html", "")) <= MAX_HTML
    attachments = email.get("attachments", [])
    assert len(attachments) <= MAX_ATTACHMENTS
    for attachment in attachments:
        assert set(attachment) == {"name", "size", "content_type"}
        assert isinstance(attachment["name"], str)
        assert len(attachment["name"]) <= MAX_ATTACHMENT_FIELD
        assert isinstance(attachment["content_type"], str)
        assert len(attachment["content_type"]) <= MAX_ATTACHMENT_FIELD
        size = attachment["size"]
        assert isinstance(size, int) and not isinstance(size, bool) and size >= 0
    for key, value in doc.get("user_properties", {}).items():
        kind, _, name = key.partition(":")
        assert kind in ("string", "number") and name.strip(), key
        if kind == "string":
            assert isinstance(value, str) and value.strip()
        else:
            assert isinstance(value, int | float) and not isinstance(value, bool)
            assert math.isfinite(value)
    if "comment_id" in doc:
        assert COMMENT_ID.fullmatch(doc["comment_id"])
    # Serializes to strict UTF-8 JSON: no lone surrogates anywhere, no NaN.
    json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")


def check_with_emulator(doc: RawEmailDocument) -> None:
    """The emulator's strict validator, when that module is importable."""
    validate = pytest.importorskip("gateway.emulator._validate")
    validate.validate_predict_raw_emails(
        {"documents": [doc], "transform_tag": "generic.0.CONVKER5"}
    )


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@functools.cache
def parse(name: str) -> tuple[ParsedMessage, RawEmailDocument]:
    """The fixture parsed once per test run (callers must not modify the document)."""
    return parse_fresh(name)


def parse_fresh(name: str) -> tuple[ParsedMessage, RawEmailDocument]:
    raw = load(name)
    parsed = parse_message(raw)
    return parsed, build_document(parsed, raw)


def at_recursion_headroom(headroom: int, fn: Callable[[], T]) -> T:
    """Call ``fn`` with only ``headroom`` Python frames left before RecursionError."""
    depth = 0
    frame: types.FrameType | None = sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    if sys.getrecursionlimit() - depth <= headroom:
        return fn()
    return at_recursion_headroom(headroom, fn)


def nested_multipart(depth: int) -> bytes:
    body = b""
    for i in range(depth):
        body += f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n".encode()
    body += f"--b{depth}\r\nContent-Type: text/plain\r\n\r\ndeep\r\n--b{depth}--\r\n".encode()
    for i in reversed(range(depth)):
        body += f"--b{i}--\r\n".encode()
    head = b"Subject: nested\r\nMessage-ID: <n@x.example>\r\n"
    return head + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + body


# --- the corpus as a whole -----------------------------------------------------------


def test_corpus_has_forty_fixtures_each_listed_in_the_readme() -> None:
    """The corpus holds at least 40 messages and its README documents every one."""
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    assert len(ALL_FIXTURES) >= 40
    missing = [name for name in ALL_FIXTURES if f"| {name} |" not in readme]
    assert missing == []


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_builds_a_document_within_the_api_limits(name: str) -> None:
    """Every fixture gives a document that keeps every limit of the API schema."""
    _, doc = parse(name)
    check_document(doc)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_builds_a_document_the_strict_validator_accepts(name: str) -> None:
    """Every fixture's document passes the emulator's strict predict-raw-emails validator."""
    _, doc = parse(name)
    check_with_emulator(doc)


def test_parsing_the_corpus_in_threads_gives_the_same_documents() -> None:
    """parse_message/build_document share no state: 8 threads give the sequential result."""
    names = [n for n in ALL_FIXTURES if n != "33-deep-nesting-2000.eml"] * 2
    sequential = [document_hash(parse(name)[1]) for name in names]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda name: document_hash(parse_fresh(name)[1]), names))
    assert threaded == sequential


# --- charsets ------------------------------------------------------------------------


def test_iso_2022_jp_subject_and_body_are_decoded() -> None:
    """ISO-2022-JP encoded words and body text come out as Japanese text."""
    parsed, doc = parse("10-iso-2022-jp.eml")
    assert parsed.subject == "請求書の支払いについて"
    assert "請求書番号 INV-55501 のお支払い" in doc["raw_email"]["body"]["plain"]


def test_shift_jis_body_with_windows_characters_is_decoded() -> None:
    """Shift_JIS is read as cp932, so ①②③ and 髙 survive."""
    parsed, doc = parse("11-shift-jis.eml")
    assert parsed.subject == "配送状況のお知らせ"
    plain = doc["raw_email"]["body"]["plain"]
    assert "注文番号 ORD-314159 の配送状況" in plain
    assert "①②③ 髙橋" in plain


def test_latin1_8bit_body_and_encoded_headers_are_decoded() -> None:
    """An ISO-8859-1 8-bit body and ISO-8859-1 encoded words decode to accented text."""
    parsed, doc = parse("08-latin1-8bit.eml")
    assert parsed.subject == "Réclamation commande ORD-224466"
    assert ("From", "François Müller <fm@client.example>") in parsed.headers
    plain = doc["raw_email"]["body"]["plain"]
    assert "arrivée abîmée. Grüße aus München." in plain


def test_raw_utf8_headers_and_body_are_decoded() -> None:
    """Raw 8-bit UTF-8 in headers (SMTPUTF8 style) reads as UTF-8, also in headers.raw."""
    parsed, doc = parse("09-utf8-8bit.eml")
    assert parsed.subject == "Änderung der Lieferadresse – Bestellung ORD-778899"
    assert "Subject: Änderung der Lieferadresse" in doc["raw_email"]["headers"]["raw"]
    assert "Königstraße 12, 50667 Köln. Vielen Dank! 😀" in doc["raw_email"]["body"]["plain"]


def test_windows_1252_quoted_printable_keeps_smart_quotes_and_euro() -> None:
    """windows-1252 QP decodes its 0x80-0x9F characters (’ – “ ” €)."""
    parsed, doc = parse("40-quoted-printable-cp1252.eml")
    assert parsed.subject == "Leave request – Christmas"
    plain = doc["raw_email"]["body"]["plain"]
    assert "I’d like to take leave from 22 to 29 December – the “quiet week”." in plain
    assert "The € cost" in plain


def test_gb2312_html_body_is_decoded() -> None:
    """A GB2312 html-only message decodes its html and Subject."""
    parsed, doc = parse("41-gb2312-html.eml")
    assert parsed.subject == "订单查询"
    assert doc["raw_email"]["body"] == {"html": parsed.text_html}
    assert "您好，我的订单 ORD-202311 还没有收到" in doc["raw_email"]["body"]["html"]


def test_wrong_and_unknown_charset_labels_fall_back_to_readable_text() -> None:
    """latin-1 bytes labelled utf-8, and an unknown label, still decode readably."""
    parsed, doc = parse("18-broken-wrong-charset.eml")
    plain = doc["raw_email"]["body"]["plain"]
    assert "Déjà trois semaines sans remboursement" in plain
    assert "Zweiter Teil: Größe stimmt nicht." in plain
    assert "CharsetFallbackDefect" in parsed.defects


def test_invalid_utf8_in_headers_gives_text_without_surrogates() -> None:
    """Invalid UTF-8 header bytes are decoded (windows-1252) rather than kept as surrogates."""
    parsed, doc = parse("35-invalid-utf8-headers.eml")
    assert parsed.subject.startswith("Complaint ")
    assert parsed.from_addresses == ("broken@customer.example",)
    for _, value in parsed.headers:
        value.encode("utf-8")
    assert "X-Weird: " in doc["raw_email"]["headers"]["raw"]


def test_nul_bytes_never_reach_the_document() -> None:
    """NUL bytes in headers and body are removed or blanked out."""
    parsed, doc = parse("34-nul-bytes.eml")
    assert "\x00" not in json.dumps(doc, ensure_ascii=False)
    assert "ORD-161803" in doc["raw_email"]["body"]["plain"]
    assert "ORD-161803" in parsed.subject


# --- attachments ---------------------------------------------------------------------


def attachments_of(name: str) -> list[tuple[str, int, str]]:
    _, doc = parse(name)
    return [(a["name"], a["size"], a["content_type"]) for a in doc["raw_email"]["attachments"]]


def test_rfc2231_attachment_name_and_decoded_size() -> None:
    """An RFC 2231 UTF-8 filename decodes, and size is the decoded size, not base64's."""
    raw = load("04-attachment-rfc2231-name.eml")
    assert attachments_of("04-attachment-rfc2231-name.eml") == [
        ("Rechnung März 2024.pdf", 1069, "application/pdf")
    ]
    assert raw.count(b"\r\n") > 1069 // 76  # the wire form is longer (base64)


def test_rfc2047_attachment_name_is_decoded() -> None:
    """Encoded words inside name=/filename= decode (Cyrillic)."""
    assert attachments_of("05-attachment-rfc2047-name.eml") == [
        (
            "Договор 2024.docx",
            500,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        )
    ]


def test_rfc2231_continuations_and_latin1_names_are_decoded() -> None:
    """filename*0*/filename*1* continuations join; an ISO-8859-1 RFC 2231 name decodes."""
    assert attachments_of("06-attachment-rfc2231-continuation.eml") == [
        ("見積書_2024年度_株式会社サンプル.xlsx", 2048, "application/vnd.ms-excel"),
        ("Straße und Grüße.txt", 10, "text/plain"),
    ]


def test_raw_utf8_filename_and_unnamed_attachment() -> None:
    """A raw 8-bit UTF-8 filename decodes; an unnamed part is named from its type."""
    assert attachments_of("47-raw-utf8-filename.eml") == [
        ("Übersicht Ärger.pdf", 1069, "application/pdf"),
        ("attachment.bin", 3, "application/octet-stream"),
    ]


def test_long_attachment_name_is_cut_to_256_keeping_the_extension() -> None:
    """A 316-character name is cut to 256 characters and keeps '.pdf'."""
    ((name, _, _),) = attachments_of("48-long-attachment-name.eml")
    assert len(name) == MAX_ATTACHMENT_FIELD
    assert name.startswith("Very long attachment name Very long")
    assert name.endswith(".pdf")


def test_nested_message_is_one_attachment_named_after_its_subject() -> None:
    """message/rfc822 is one attachment '<subject>.eml', sized as sent; its text is not body."""
    raw = load("07-nested-message-rfc822.eml")
    # The CRLF before a boundary line belongs to the boundary (RFC 2046 §5.1.1).
    inner = raw[raw.index(b"From: Billing") : raw.rindex(b"\r\n--mix-07--")]
    ((name, size, ctype),) = attachments_of("07-nested-message-rfc822.eml")
    assert (name, ctype) == ("Invoice INV-20231 overdue.eml", "message/rfc822")
    assert size == len(inner)
    _, doc = parse("07-nested-message-rfc822.eml")
    plain = doc["raw_email"]["body"]["plain"]
    assert "can someone in finance" in plain
    assert "30 days overdue" not in plain


def test_dsn_report_parts_are_attachments_and_the_notice_is_the_body() -> None:
    """multipart/report: the notice is the body; status and returned message are attachments."""
    parsed, doc = parse("28-dsn-bounce.eml")
    assert "could not\nbe delivered" in doc["raw_email"]["body"]["plain"]
    assert [(a.name, a.content_type) for a in parsed.attachments] == [
        ("delivery-status.txt", "message/delivery-status"),
        ("Quarterly figures.eml", "message/rfc822"),
    ]


def test_calendar_invite_parts_are_attachments() -> None:
    """An inline text/calendar and an invite.ics are attachments; the plain text is the body."""
    parsed, doc = parse("27-calendar-invite.eml")
    assert [(a.name, a.content_type) for a in parsed.attachments] == [
        ("attachment.ics", "text/calendar"),
        ("invite.ics", "application/ics"),
    ]
    assert doc["raw_email"]["body"] == {"plain": "You have been invited to: Quarterly review"}


def test_inline_image_is_an_attachment_and_html_the_body() -> None:
    """multipart/related: the html is the body, the cid: image an attachment of 100 bytes."""
    parsed, doc = parse("36-inline-image-related.eml")
    assert set(doc["raw_email"]["body"]) == {"html"}
    assert attachments_of("36-inline-image-related.eml") == [("attachment.png", 100, "image/png")]
    assert parsed.text_plain is None


def test_text_part_marked_attachment_is_not_body_text() -> None:
    """A text/plain part with Content-Disposition: attachment stays out of the body."""
    _, doc = parse("45-text-attachment.eml")
    assert doc["raw_email"]["body"] == {"plain": "Log of the incident attached."}
    assert attachments_of("45-text-attachment.eml") == [("error.log", 60, "text/plain")]


def test_attachment_only_message_still_has_a_body_key() -> None:
    """A message that is one PDF gives plain "" (the API needs plain or html) and the PDF."""
    _, doc = parse("44-attachment-only.eml")
    assert doc["raw_email"]["body"] == {"plain": ""}
    assert attachments_of("44-attachment-only.eml") == [("scan0001.pdf", 1069, "application/pdf")]


def test_truncated_base64_attachment_counts_the_bytes_that_decode() -> None:
    """A base64 part cut short is still an attachment, sized by what decodes."""
    ((name, size, _),) = attachments_of("17-broken-truncated-base64.eml")
    assert name == "scan.pdf"
    assert 0 < size < 1069


def test_130_attachments_are_capped_at_128_in_order_and_counted_in_full() -> None:
    """The document lists the first 128 attachments; Attachment Count says 130."""
    parsed, doc = parse("24-130-attachments.eml")
    assert len(parsed.attachments) == 130
    sent = doc["raw_email"]["attachments"]
    assert [a["name"] for a in sent] == [f"report-{i:03d}.csv" for i in range(128)]
    assert [a["size"] for a in sent] == [
        len(f"attachment number {i}\n") * (i % 5 + 1) for i in range(128)
    ]
    assert doc["user_properties"]["number:Attachment Count"] == 130


# --- headers -------------------------------------------------------------------------


def test_content_type_and_transfer_encoding_are_left_out_of_raw_headers() -> None:
    """headers.raw carries the other headers but never Content-Type/-Transfer-Encoding."""
    _, doc = parse("02-html-only.eml")
    raw = doc["raw_email"]["headers"]["raw"]
    assert raw.split("\r\n") == [
        "From: Bob Chen <bob.chen@acme.example>",
        "To: IT Helpdesk <it@acme.example>",
        "Subject: Password reset request",
        "Date: Tue, 14 Nov 2023 09:12:45 +0100",
        "Message-ID: <02-pwreset@mail.customer.example>",
        "MIME-Version: 1.0",
    ]


def test_folded_headers_are_unfolded_into_one_line_each() -> None:
    """Folded headers become single lines in headers.raw; encoded words split over folds join."""
    parsed, doc = parse("43-folded-headers.eml")
    lines = doc["raw_email"]["headers"]["raw"].split("\r\n")
    assert "Message-ID: <43-folded@mail.customer.example>" in lines
    assert "Date: Tue, 14 Nov 2023 09:12:45 +0100" in lines
    assert "References: <a1@customer.example>\t<a2@customer.example> <a3@customer.example>" in lines
    assert parsed.subject == (
        "Complaint about the very late delivery of order ORD-998877 – second reminder"
    )
    assert parsed.message_id == "43-folded@mail.customer.example"


def test_a_header_longer_than_the_limit_is_dropped_whole() -> None:
    """A 70,000-character header is dropped; every other header is kept."""
    _, doc = parse("19-huge-header-70000.eml")
    raw = doc["raw_email"]["headers"]["raw"]
    assert "X-Tracking-Data" not in raw
    assert [line.split(":")[0] for line in raw.split("\r\n")] == [
        "From", "To", "Subject", "Date", "Message-ID", "MIME-Version"
    ]  # fmt: skip


def test_over_the_limit_trace_headers_go_first_and_no_header_is_cut() -> None:
    """2,000 Received lines: addressing headers kept, top-most Received kept, none cut."""
    raw_bytes = load("20-2000-received.eml")
    _, doc = parse("20-2000-received.eml")
    raw = doc["raw_email"]["headers"]["raw"]
    assert len(raw) <= MAX_RAW_HEADERS
    whole = {f"{name}: {value}" for name, value in header_items(raw_bytes)}
    lines = raw.split("\r\n")
    assert all(line in whole for line in lines)
    names = [line.split(":")[0] for line in lines]
    for essential in ("From", "To", "Subject", "Date", "Message-ID"):
        assert essential in names
    received = [line for line in lines if line.startswith("Received: ")]
    assert 100 < len(received) < 2000
    assert received[0].startswith("Received: from relay0.example.net ")
    assert received[-1].startswith(f"Received: from relay{len(received) - 1}.example.net ")
    # Nothing more would have fitted: the next Received line is over the budget.
    assert len(raw) + 2 + len(received[0]) + 8 > MAX_RAW_HEADERS


def test_dkim_and_arc_headers_are_kept_when_there_is_room() -> None:
    """DKIM-Signature and ARC headers are kept (unfolded) when under the limit."""
    _, doc = parse("32-dkim-signature.eml")
    lines = doc["raw_email"]["headers"]["raw"].split("\r\n")
    dkim = [line for line in lines if line.startswith("DKIM-Signature: ")]
    assert len(dkim) == 1
    assert "h=from:to:subject:date:message-id;" in dkim[0]
    assert any(line.startswith("ARC-Seal: ") for line in lines)


def test_auto_reply_and_list_headers_reach_the_document() -> None:
    """Auto-Submitted and List-Unsubscribe, which rules and the model use, are in headers.raw."""
    _, ooo = parse("29-out-of-office.eml")
    _, news = parse("30-newsletter-list-unsubscribe.eml")
    assert "Auto-Submitted: auto-replied" in ooo["raw_email"]["headers"]["raw"]
    assert (
        "List-Unsubscribe: <https://shop.example/unsubscribe?u=123>"
        in (news["raw_email"]["headers"]["raw"])
    )
    assert set(news["raw_email"]["body"]) == {"plain", "html"}


def test_missing_headers_give_empty_fields_not_errors() -> None:
    """No From / Subject / Date / Message-ID: the matching fields are empty or absent."""
    no_from, doc = parse("12-no-from.eml")
    assert no_from.from_addresses == ()
    assert "string:Sender Domain" not in doc["user_properties"]
    assert parse("15-no-subject.eml")[0].subject == ""
    assert "Date:" not in parse("14-no-date.eml")[1]["raw_email"]["headers"]["raw"]
    no_id, doc = parse("13-no-message-id.eml")
    assert no_id.message_id is None
    assert "comment_id" not in doc


def test_addresses_are_parsed_from_from_and_to() -> None:
    """from_addresses/to_addresses hold bare addresses, encoded display names and all."""
    parsed, _ = parse("42-multiple-recipients.eml")
    assert parsed.from_addresses == ("jack@acme.example",)
    assert parsed.to_addresses == (
        "it@acme.example",
        "security@acme.example",
        "joerg@acme.example",
    )
    assert (
        "To",
        'it@acme.example, "Security Team" <security@acme.example>, Jörg <joerg@acme.example>',
    ) in parsed.headers


# --- bodies --------------------------------------------------------------------------


def test_long_plain_body_is_cut_on_a_character_boundary() -> None:
    """plain is cut to <= 65,536 characters and never between a letter and its accent."""
    parsed, doc = parse("25-long-plain-multibyte-cut.eml")
    full = parsed.text_plain
    assert full is not None and len(full) > MAX_PLAIN
    assert full[MAX_PLAIN - 1 : MAX_PLAIN + 1] == "e\u0301"
    plain = doc["raw_email"]["body"]["plain"]
    assert plain == full[: MAX_PLAIN - 1]
    plain.encode("utf-8")  # no lone surrogate


def test_long_plain_body_of_astral_characters_stays_valid_utf8() -> None:
    """Emoji at the cut (one code point each) never leave half a surrogate pair."""
    raw = (
        b"Subject: emoji\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(("😀" * (MAX_PLAIN + 10)).encode("utf-8"))
    )
    doc = build_document(parse_message(raw), raw)
    plain = doc["raw_email"]["body"]["plain"]
    assert plain == "😀" * MAX_PLAIN
    plain.encode("utf-8")


def test_bare_lf_and_crlf_versions_give_the_same_raw_email() -> None:
    """Line endings do not change the document: bare-LF mail reads like CRLF mail."""
    lf = load("26-bare-lf.eml")
    crlf = lf.replace(b"\n", b"\r\n")
    doc_lf = build_document(parse_message(lf), lf)
    doc_crlf = build_document(parse_message(crlf), crlf)
    assert doc_lf["raw_email"] == doc_crlf["raw_email"]
    assert (
        "Outage affects all customers.\nPlease respond asap.\n"
        in (doc_lf["raw_email"]["body"]["plain"])
    )


def test_multipart_without_boundary_is_read_as_text() -> None:
    """A multipart with no boundary parameter keeps its text as the plain body."""
    parsed, doc = parse("16-broken-missing-boundary.eml")
    assert "The payment for invoice INV-88812 failed. Urgent." in doc["raw_email"]["body"]["plain"]
    assert "NoBoundaryInMultipartDefect" in parsed.defects


def test_sensitive_looking_numbers_are_passed_through_unchanged() -> None:
    """Card numbers, IBANs and amounts reach the classifier as written (it detects them)."""
    _, doc = parse("31-invoice-iban-card.eml")
    plain = doc["raw_email"]["body"]["plain"]
    for text in ("4111111111111111", "DE89 3704 0044 0532 0130 00", "€1,200.00", "INV-20231"):
        assert text in plain


# --- hostile input -------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\r\n\r\n", b"\xff" * 100, b":" * 1000])
def test_degenerate_input_gives_an_empty_but_valid_document(raw: bytes) -> None:
    """Empty, NUL-only, separator-only and junk input still give a valid document."""
    parsed = parse_message(raw)
    doc = build_document(parsed, raw)
    check_document(doc)
    assert parsed.size == len(raw)


def test_empty_file_and_empty_body_give_plain_empty_string() -> None:
    """No text at all: body is {"plain": ""}, which the API accepts."""
    for name in ("22-empty-file.eml", "21-empty-body.eml"):
        _, doc = parse(name)
        assert doc["raw_email"]["body"] == {"plain": ""}


def test_binary_garbage_becomes_a_headerless_text_document() -> None:
    """Random bytes have no headers; their decoded text is the (valid) plain body."""
    parsed, doc = parse("23-binary-garbage.eml")
    assert doc["raw_email"]["headers"]["raw"] == ""
    assert parsed.text_plain is not None and len(parsed.text_plain) > 1000
    check_document(doc)


def test_2000_deep_nesting_keeps_the_headers_and_skips_the_mime_parse() -> None:
    """A 2,000-deep multipart is not handed to the parser: headers kept, defect recorded."""
    parsed, doc = parse("33-deep-nesting-2000.eml")
    assert parsed.subject == "Deeply nested message"
    assert "MimeContainerLimitDefect" in parsed.defects
    assert doc["comment_id"] == "33-deep@mail.customer.example"
    assert doc["raw_email"]["body"] == {"plain": ""}


def test_container_limit_is_case_insensitive_and_counts_message_parts() -> None:
    """'BOUNDARY=' in capitals and a chain of message/rfc822 parts count towards the limit."""
    shouting = nested_multipart(300).replace(b"boundary=", b"BOUNDARY=")
    chain = b"Subject: chain\r\n" + b"Content-Type: message/rfc822\r\n\r\n" * 300 + b"x\r\n"
    for raw in (shouting, chain):
        parsed = parse_message(raw)
        assert "MimeContainerLimitDefect" in parsed.defects
        check_document(build_document(parsed, raw))


def test_recursion_error_from_mail_parser_is_caught() -> None:
    """With little stack left, a 200-deep message makes mail-parser raise; we still return."""
    raw = nested_multipart(200)
    parsed = at_recursion_headroom(100, lambda: parse_message(raw))
    assert "MailParserRecursionError" in parsed.defects
    assert parsed.subject == "nested"
    check_document(build_document(parsed, raw))


def test_moderate_nesting_is_parsed_normally() -> None:
    """A 50-deep multipart (under the container limit) is parsed down to its text."""
    parsed = parse_message(nested_multipart(50))
    assert parsed.text_plain == "deep"
    assert parsed.defects == ()


def test_build_document_accepts_a_hand_made_parsed_message_without_raw() -> None:
    """Given no raw bytes, headers.raw is rebuilt from ParsedMessage.headers."""
    parsed = ParsedMessage(
        headers=(("Subject", "Hi\r\nthere"), ("Content-Type", "text/plain")),
        subject="Hi",
        message_id=None,
        from_addresses=(),
        to_addresses=(),
        text_plain=None,
        text_html="<p>x</p>",
        attachments=(),
        size=10,
        defects=(),
    )
    doc = build_document(parsed, b"")
    assert doc["raw_email"]["headers"]["raw"] == "Subject: Hi  there"
    assert doc["raw_email"]["body"] == {"html": "<p>x</p>"}


def test_parse_message_accepts_bytearray_and_memoryview() -> None:
    """Any bytes-like input parses like bytes."""
    raw = load("03-plain-refund.eml")
    expected = parse_message(raw)
    assert parse_message(bytearray(raw)) == expected  # type: ignore[arg-type]
    assert parse_message(memoryview(raw)) == expected  # type: ignore[arg-type]


# --- comment_id ----------------------------------------------------------------------


def test_comment_id_is_the_message_id_without_brackets() -> None:
    """A Message-ID that matches the API pattern becomes the comment_id as is."""
    assert parse("01-multipart-alternative.eml")[1]["comment_id"] == (
        "01-complaint@mail.customer.example"
    )


@pytest.mark.parametrize(
    ("name", "message_id"),
    [
        ("37-message-id-with-slash.eml", "CAB+x/yZ=abc/def==@mail.gmail.example"),
        ("38-message-id-non-ascii.eml", "größe-ärger-38@mail.customer.example"),
        ("39-message-id-too-long.eml", "x" * 1100 + "@mail.customer.example"),
    ],
)
def test_comment_id_is_a_sha256_when_the_message_id_does_not_fit(
    name: str, message_id: str
) -> None:
    """'/', non-ASCII or > 1024 characters: comment_id is the SHA-256 hex of the Message-ID."""
    parsed, doc = parse(name)
    assert parsed.message_id == message_id
    assert doc["comment_id"] == hashlib.sha256(message_id.encode("utf-8")).hexdigest()


def test_empty_message_id_gives_no_comment_id() -> None:
    """'Message-ID: <>' is treated as absent."""
    raw = b"Message-ID: <>\r\nSubject: x\r\n\r\nbody\r\n"
    parsed = parse_message(raw)
    assert parsed.message_id is None
    assert "comment_id" not in build_document(parsed, raw)


# --- user_properties -----------------------------------------------------------------


def props(raw: bytes = b"", **kwargs: Any) -> dict[str, Any]:
    raw = raw or load("04-attachment-rfc2231-name.eml")
    return dict(build_document(parse_message(raw), raw, **kwargs)["user_properties"])


def test_computed_user_properties() -> None:
    """Mailbox, Attachment Count, Sender Domain and Size KB are added."""
    raw = load("04-attachment-rfc2231-name.eml")
    assert props(raw, mailbox="ap@acme.example") == {
        "string:Mailbox": "ap@acme.example",
        "number:Attachment Count": 1,
        "string:Sender Domain": "supplier.example",
        "number:Size KB": round(len(raw) / 1024, 1),
    }


def test_caller_properties_win_over_computed_ones_of_the_same_name() -> None:
    """A caller's key (either type, any case) replaces the computed property of that name."""
    got = props(
        mailbox="ap@acme.example",
        user_properties={"string:mailbox": "shared", "string:Attachment Count": "many"},
    )
    assert got["string:mailbox"] == "shared"
    assert got["string:Attachment Count"] == "many"
    assert "string:Mailbox" not in got
    assert "number:Attachment Count" not in got


def test_invalid_caller_properties_are_dropped_or_converted() -> None:
    """Bad prefixes, empty strings, NaN, infinity and booleans are dropped; clear cases convert."""
    got = props(
        user_properties={
            "string:Empty": "  ",
            "string:Team": " Accounts ",
            "number:NaN": math.nan,
            "number:Inf": math.inf,
            "number:Flag": True,
            "number:Priority": "2.5",
            "number:Words": "many",
            "string:Code": 42,
            "City": "London",
            "bool:X": "y",
            "string:": "no name",
        }
    )
    extra = {k: v for k, v in got.items() if k.split(":", 1)[1] not in {
        "Attachment Count", "Sender Domain", "Size KB"}}  # fmt: skip
    assert extra == {"string:Team": "Accounts", "number:Priority": 2.5, "string:Code": "42"}


def test_empty_mailbox_adds_no_mailbox_property() -> None:
    """mailbox='' (or whitespace) is not sent: string properties must be non-empty."""
    assert "string:Mailbox" not in props(mailbox="  ")


# --- document_hash -------------------------------------------------------------------


def test_document_hash_is_sha256_of_sorted_compact_json() -> None:
    """document_hash is the SHA-256 of the sorted-key compact UTF-8 JSON."""
    _, doc = parse("09-utf8-8bit.eml")
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert document_hash(doc) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=4))
def test_document_hash_of_any_document_is_that_of_json_dumps(doc: dict[str, Any]) -> None:
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    expected = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    assert document_hash(doc) == expected  # type: ignore[arg-type]  # any JSON object


def test_document_hash_is_stable_and_sensitive_to_content() -> None:
    """Same message -> same hash (key order irrelevant); a changed body -> another hash."""
    raw = load("03-plain-refund.eml")
    first = build_document(parse_message(raw), raw)
    again = build_document(parse_message(raw), raw)
    reordered: Any = dict(reversed(list(first.items())))
    assert document_hash(first) == document_hash(again) == document_hash(reordered)
    changed = raw.replace(b"jacket", b"jumper")
    assert document_hash(build_document(parse_message(changed), changed)) != document_hash(first)
