"""A message of 100,000 MIME parts costs the gateway a bounded parse, and the memory of a
burst of them goes back to the system.

Before the part cap, one such 4.9 MB message took 5 s of CPU to parse, four at once took
28 s each, peaked at 448 MB RSS and stayed at about 470 MB afterwards.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.mail import parse_message

from .serve_support import port_of, read_until, start_serve, stop_serve

PARTS = 100_000


def _hostile(n: int) -> bytes:
    parts = b"".join(
        b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(PARTS)
    )
    return (
        (
            b"From: mallory@example.net\r\nTo: triage@example.com\r\nSubject: parts %d\r\n"
            b"Message-ID: <parts-%d@example.net>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" % (n, n)
        )
        + parts
        + b"--b--\r\n"
    )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_parts_past_the_cap_are_counted_not_parsed() -> None:
    """The first 1,000 parts are read; the rest are counted and named as a defect, and
    the document says how many were not read."""
    parsed = parse_message(_hostile(1))
    assert "MimePartLimitDefect" in parsed.defects
    # Parts 1,001 to 100,000 and the closing delimiter, less the first line of the body.
    assert parsed.parts_skipped == PARTS - 1000
    assert parsed.text_plain is not None and "part 999" in parsed.text_plain
    assert "part 1000\r" not in (parsed.text_plain or "")


@pytest.fixture
def gateway(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[smtp]\nlisten = '127.0.0.1:0'\n[downstream]\nurl = 'maildir://maildir'\n"
        "[classifier]\nprovider = 'emulator'\n[metrics]\nlisten = ''\n",
        encoding="utf-8",
    )
    log = (tmp_path / "gateway.log").open("wb")
    proc = start_serve(tmp_path, "--config", str(config), stderr=log)
    try:
        yield proc, port_of(read_until(proc, "cm-gateway listening on")), tmp_path
    finally:
        stop_serve(proc)
        log.close()


def test_a_burst_of_hostile_messages_is_delivered_and_its_memory_returns(
    gateway: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """Four 4.5 MB messages of 100,000 parts each, sent at once over SMTP: each is
    delivered with its log line naming the parts not read, and the gateway's RSS comes
    back within 40 MB of what it was before the burst."""
    proc, port, tmp = gateway
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:  # warm up every path
        client.sendmail("alice@example.net", ["triage@example.com"], _hostile(0)[:2000])
    time.sleep(0.5)
    before = _rss_mb(proc.pid)

    def send(n: int) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.ehlo("client.test")
            client.mail("mallory@example.net")
            client.rcpt("triage@example.com")
            return client.data(_hostile(n))

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(send, range(1, 5)))
    assert all(code == 250 for code, _ in replies), replies
    time.sleep(1.0)
    after = _rss_mb(proc.pid)
    print(f"RSS {before:.0f} MB before the burst, {after:.0f} MB after")
    assert after - before < 40, f"RSS {before:.0f} MB before the burst, {after:.0f} MB after"
    lines = [
        json.loads(x) for x in (tmp / "gateway.log").read_text().splitlines() if x.startswith("{")
    ]
    skipped = [x.get("mime_parts_skipped") for x in lines if x.get("event") == "message"]
    assert skipped.count(PARTS - 1000) == 4, skipped
    assert len(list((tmp / "maildir" / "new").iterdir())) == 5
