"""Parse + document time for typical and large messages (run with ``-m perf -s``)."""

from __future__ import annotations

import base64
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.mail import build_document, parse_message

pytestmark = pytest.mark.perf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"


def message(text_bytes: int, attachment_bytes: int) -> bytes:
    """A multipart/mixed message: alternative text of ~text_bytes, two PDFs in total ~size."""
    rng = random.Random(7)
    sentence = "Please find the invoice INV-20231 attached; the refund for ORD-123456 is pending. "
    text = (sentence * (text_bytes // len(sentence) + 1))[:text_bytes]
    wrapped = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    head = (
        "From: Alice <alice@customer.example>\r\nTo: ap@acme.example\r\n"
        "Subject: Invoice INV-20231 overdue\r\nDate: Tue, 14 Nov 2023 09:12:45 +0100\r\n"
        "Message-ID: <bench@customer.example>\r\nMIME-Version: 1.0\r\n"
        + "".join(
            f"Received: from relay{i}.example.net by mx.acme.example; "
            f"Tue, 14 Nov 2023 09:12:4{i} +0000\r\n"
            for i in range(5)
        )
        + 'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
    )
    parts = [
        '--mix\r\nContent-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        f"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{wrapped}\r\n"
        f"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>{wrapped}</p>\r\n--alt--\r\n"
    ]
    for n in range(2 if attachment_bytes else 0):
        data = rng.randbytes(attachment_bytes // 2)
        encoded = base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")
        parts.append(
            f'--mix\r\nContent-Type: application/pdf; name="scan{n}.pdf"\r\n'
            f'Content-Disposition: attachment; filename="scan{n}.pdf"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}"
        )
    return (head + "".join(parts) + "--mix--\r\n").encode("utf-8")


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def parse_and_build(raw: bytes) -> Callable[[], object]:
    return lambda: build_document(parse_message(raw), raw)


def test_parse_time_of_a_4kb_and_a_5mb_message() -> None:
    """Median parse + document time: ~4 KB text message and ~5 MB message with 2 PDFs."""
    small = message(1_500, 0)
    large = message(20_000, 3_700_000)
    small_ms = median_ms(parse_and_build(small), 31)
    large_ms = median_ms(parse_and_build(large), 9)
    print(
        f"\n{len(small) / 1024:.1f} KB: {small_ms:.2f} ms median;"
        f" {len(large) / 1024 / 1024:.2f} MB: {large_ms:.1f} ms median"
    )
    assert 3_500 < len(small) < 4_600 and 4.9e6 < len(large) < 5.3e6
    assert small_ms < 100 and large_ms < 5_000  # loose: a shared, loaded 2-core machine


@pytest.mark.parametrize(
    "name", ["20-2000-received.eml", "24-130-attachments.eml", "33-deep-nesting-2000.eml"]
)
def test_parse_time_of_hostile_fixtures(name: str) -> None:
    """Median parse + document time of the corpus' most expensive messages."""
    raw = (FIXTURES / name).read_bytes()
    ms = median_ms(parse_and_build(raw), 5)
    print(f"\n{name} ({len(raw) / 1024:.0f} KB): {ms:.1f} ms median")
    assert ms < 5_000
