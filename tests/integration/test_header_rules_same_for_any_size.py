"""A ``header`` rule sees the same decoded value whatever the size of the message.

Past ``classify_max_size`` a message is not parsed whole (it is not classified), only its
header block is read. The header values the rules see must not depend on that: one header
reader and one decoder serve both paths. Proved with a real ``cm-gateway serve``.
"""

from __future__ import annotations

import smtplib
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

import pytest

from .serve_support import port_of, read_until, start_serve, stop_serve

CLASSIFY_MAX = 4096
RULES = """\
rules:
  - name: latin1-subject
    when: { header: { name: Subject, contains: "café menu" } }
    actions: [ { add_header: { X-Test-Seen: latin1 } } ]
  - name: unknown-charset-subject
    when: { header: { name: X-Topic, contains: "Invoice due" } }
    actions: [ { add_header: { X-Test-Seen: unknown-charset } } ]
  - name: folded-utf8-encoded-word
    when: { header: { name: X-Note, matches: "^Grüße aus Köln$" } }
    actions: [ { add_header: { X-Test-Seen: encoded-word } } ]
"""
HEADERS = (
    b"From: alice@example.net\r\n"
    b"To: triage@example.com\r\n"
    b"Subject: caf\xe9 menu\r\n"
    b"X-Topic: =?x-unknown?q?Invoice_due?=\r\n"
    b"X-Note: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n =?utf-8?q?_aus_K=C3=B6ln?=\r\n"
    b"Message-ID: <{n}@example.net>\r\n"
)


def _message(n: int, body_size: int) -> bytes:
    body = b"".join(b"line %06d of the body\r\n" % i for i in range(body_size // 24 + 1))
    return HEADERS.replace(b"{n}", str(n).encode()) + b"\r\n" + body


@pytest.fixture
def gateway(tmp_path: Path):
    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[smtp]\nlisten = '127.0.0.1:0'\n"
        "[downstream]\nurl = 'maildir://maildir'\n"
        f"[classifier]\nprovider = 'emulator'\nclassify_max_size = {CLASSIFY_MAX}\n"
        "[rules]\nfiles = ['rules.yaml']\n[metrics]\nlisten = ''\n",
        encoding="utf-8",
    )
    proc = start_serve(tmp_path, "--config", str(config))
    try:
        yield port_of(read_until(proc, "cm-gateway listening on")), tmp_path / "maildir" / "new"
    finally:
        stop_serve(proc)


def test_header_rules_fire_alike_on_small_and_large_messages(gateway: tuple[int, Path]) -> None:
    """The same three header rules fire on a classified small message and on a message
    past classify_max_size (headers-only read): a raw Latin-1 byte, an encoded-word in an
    unknown charset and a folded pair of UTF-8 encoded-words decode the same way."""
    port, maildir = gateway
    small, large = _message(1, 200), _message(2, CLASSIFY_MAX * 4)
    assert len(small) < CLASSIFY_MAX < len(large)
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for raw in (small, large):
            client.sendmail("alice@example.net", ["triage@example.com"], raw)
    seen: dict[str, tuple[list[str], str]] = {}
    for path in maildir.iterdir():
        message = BytesParser(policy=compat32).parsebytes(path.read_bytes())
        seen[str(message["Message-ID"])] = (
            sorted(message.get_all("X-Test-Seen") or []),
            str(message["X-CM-Status"]),
        )
    everything = ["encoded-word", "latin1", "unknown-charset"]
    assert seen["<1@example.net>"] == (everything, "classified")
    assert seen["<2@example.net>"] == (everything, "skipped; reason=too-large")
