"""Frozen payload output: a speed-up of parsing or serialising must change nothing.

``payload_golden.json`` holds, for every fixture message and for synthetic messages that
stress the address headers and the header block (the parts the CPU work of issue 5
rewrote), the document hash (with and without caller properties), the defects and the
addresses. It was written by the code *before* that work (commit 0a1a2f5); regenerate it
only for an intended change of output, with ``python -m tests.unit.test_payload_golden``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.documents import document_hash
from gateway.mail import _mimeparser as mimeparser
from gateway.mail import build_document, parse_message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
GOLDEN = Path(__file__).with_name("payload_golden.json")
PROPERTIES: dict[str, str | float] = {"string:Source": "golden", "number:Priority": 2}

ADDRESSES = [
    b"a@b.example", b"<a@b.example>", b"Alice <a@b.example>", b'"Doe, J" <j@x.example>',
    b"=?utf-8?q?J=C3=B6rg?= <j@x.example>", b"undisclosed-recipients:;", b"a@b, c@d",
    b"Group: x@y, z@w;", b"(comment) a@b (c)", b"<>", b"", b" ", b"a@b.example (Alice)",
    b"\xc3\xa9l\xc3\xa8ve <e@x.example>", b"\xe9 <e@x.example>", b"bad<<a@b>",
    b'"unterminated <a@b>', b"a@b\r\n\tc@d", b"Alice\r\n <a@b.example>",
    b"=?x-bogus?b?!!?= <q@r>", b"a@b.example <c@d.example>", b"<a@b.example", b"a@@b", b"@",
    b"<@route:a@b>", b"a@[127.0.0.1]", b"\x00a@b", b"=?utf-8?b?2D3e?= <a@b>",
    b'"=?utf-8?q?quoted?=" <q@x.example>', b"a@b.example," * 40,
]  # fmt: skip


def smtp_source_message(body_lines: int, line_end: bytes = b"\r\n") -> bytes:
    """What Postfix smtp-source sends (the throughput benchmark's load)."""
    head = [
        b"From: <sender@bench.example>",
        b"To: <triage@example.com>",
        b"Date: Mon, 23 Nov 2026 22:51:26 +0000 (UTC)",
        b"Message-Id: <55a7.0003.0000@bench.example>",
        b"Subject: Invoice question",
        b"",
    ]
    body = [b"%d" % n + b"X" * 77 for n in range(1, body_lines + 1)]
    return line_end.join(head + body) + line_end


def synthetic_messages() -> dict[str, bytes]:
    """Deterministic messages beyond the fixtures."""
    out = {
        "smtp-source-4k": smtp_source_message(50),
        "smtp-source-lf": smtp_source_message(50, b"\n"),
        "unix-from-line": b"From sender@x Tue Nov 14 09:00:00 2023\r\n" + smtp_source_message(3),
        "no-header-block": b"just a body line without a colon\r\n",
        "header-only-no-newline": b"From: a@b.example",
        "folded-from-only": b"From: Alice\r\n <a@b.example>\r\n\r\nhi\r\n",
        "nul-charset-word": (
            b"Subject: x\r\nContent-Type: text/plain; name==?a\x00b?q?x?=\r\n\r\nbody\r\n"
        ),
        # mail-parser raises decoding this header for its own ``mail`` dict only
        "nul-charset-mime-version": b"Subject: x\r\nMIME-Version: =?a\x00b?q?x?=\r\n\r\nbody\r\n",
    }
    for i, address in enumerate(ADDRESSES):
        for name in (b"From", b"To"):
            out[f"{name.decode().lower()}-{i}"] = (
                name + b": " + address + b"\r\nSubject: address " + b"%d" % i + b"\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n"
            )
        out[f"repeated-{i}"] = (
            b"To: x@y.example\r\nFrom: " + address + b"\r\nTo: " + address + b"\r\n"
            b"Cc: " + address + b"\r\nFrom: second@z.example\r\n\r\nbody\r\n"
        )
    return out


def all_messages() -> dict[str, bytes]:
    messages = {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.eml"))}
    messages.update(synthetic_messages())
    return messages


def outcome(raw: bytes) -> dict[str, Any]:
    """Everything of parse_message + build_document + document_hash worth pinning."""
    parsed = parse_message(raw)
    plain = build_document(parsed, raw)
    given = build_document(parsed, raw, user_properties=PROPERTIES, mailbox="inbox@acme.example")
    return {
        "hash": document_hash(plain),
        "hash_with_properties": document_hash(given),
        "hash_without_raw": document_hash(build_document(parsed, b"")),
        "defects": list(parsed.defects),
        "from": list(parsed.from_addresses),
        "to": list(parsed.to_addresses),
        "subject": parsed.subject,
        "message_id": parsed.message_id,
    }


MESSAGES = all_messages()

# Where the stdlib legitimately differs between the supported Pythons: 3.13's address
# parser no longer takes a domain literal (a@[127.0.0.1]) in its stride, so mail-parser's
# structural recovery reads it (the same address, the same document) and reports the
# recovery as an AddressHeaderDefect. Keyed by message, then (major, minor) and up.
_VERSION_DEFECTS: dict[str, dict[tuple[int, int], list[str]]] = {
    name: {(3, 13): ["AddressHeaderDefect"]} for name in ("from-25", "to-25", "repeated-25")
}


def expected_outcome(name: str) -> dict[str, Any]:
    """The golden outcome of ``name`` on the running Python."""
    expected = dict(golden()[name])
    for version, defects in sorted(_VERSION_DEFECTS.get(name, {}).items()):
        if sys.version_info[:2] >= version:
            expected["defects"] = defects
    return expected


def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text(encoding="utf-8"))
    return data


def test_the_golden_file_covers_every_message() -> None:
    """A new fixture needs a regenerated file (from code whose output is trusted)."""
    assert sorted(golden()) == sorted(MESSAGES)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_payload_output_is_unchanged(name: str) -> None:
    """Same documents (by canonical hash), defects and addresses as the frozen output."""
    assert outcome(MESSAGES[name]) == expected_outcome(name)


def test_cached_address_values_give_the_same_output_as_fresh_ones() -> None:
    """From/To values are parsed once per value: a cache hit must answer as a miss did."""
    names = [n for n in sorted(MESSAGES) if n.startswith(("from-", "to-", "repeated-"))]
    mimeparser._cached_addresses.cache_clear()
    fresh = {n: outcome(MESSAGES[n]) for n in names}
    hits = mimeparser._cached_addresses.cache_info().hits
    again = {n: outcome(MESSAGES[n]) for n in names}
    assert mimeparser._cached_addresses.cache_info().hits > hits
    assert fresh == again == {n: expected_outcome(n) for n in names}


if __name__ == "__main__":  # regenerate: python -m tests.unit.test_payload_golden
    frozen = {name: outcome(raw) for name, raw in sorted(MESSAGES.items())}
    GOLDEN.write_text(json.dumps(frozen, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    print(f"wrote {len(frozen)} entries to {GOLDEN}", file=sys.stderr)
