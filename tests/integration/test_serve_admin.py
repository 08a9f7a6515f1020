"""``cm-gateway serve`` as an administrator meets it (issue 19): forged rule headers,
skipped mail under the shipped rule sets, the envelope in the Maildir."""

from __future__ import annotations

import email
import fcntl
import os
import pty
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import termios
import time
from email.message import Message
from pathlib import Path

import pytest

from .serve_support import ROOT, port_of, read_until, start_serve, stop_serve

SHIPPED = ["shared-inbox-triage.yaml", "inline-routing.yaml", "compliance-tagging.yaml"]


def _config(tmp_path: Path, rules: str, extra_smtp: str = "", extra_classifier: str = "") -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[smtp]\nlisten = '127.0.0.1:0'\n{extra_smtp}"
        "[downstream]\nurl = 'maildir://var/maildir'\n"
        f"[classifier]\nprovider = 'emulator'\n{extra_classifier}"
        f"[rules]\nfiles = ['{rules}']\n",
        encoding="utf-8",
    )
    return config


def _delivered(tmp_path: Path, count: int) -> list[Message]:
    new = tmp_path / "var" / "maildir" / "new"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns) if new.is_dir() else []
        if len(files) >= count:
            return [email.message_from_bytes(f.read_bytes()) for f in files]
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} messages in {new}")


def test_headers_rules_write_are_stripped_from_untrusted_peers_and_follow_a_reload(
    tmp_path: Path,
) -> None:
    """A sender's own X-Triage-Priority: high does not reach the Maildir beside the
    gateway's (the README's Sieve example would match the forgery); smtp.strip_headers
    removes X-Forged-* too; after a reload that adds a rule writing X-Late, a forged
    X-Late is stripped as well."""
    rules = tmp_path / "rules.yaml"
    shipped = Path(__file__).resolve().parents[2] / "rules" / "shared-inbox-triage.yaml"
    rules.write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copytree(shipped.parent / "lists", tmp_path / "lists")  # the set's VIP list
    config = _config(tmp_path, str(rules), extra_smtp="strip_headers = ['X-Forged-*']\n")
    forged = (
        "From: mallory@example.net\r\nTo: triage@example.com\r\nSubject: Hello\r\n"
        "X-Triage-Priority: high\r\nX-Forged-Thing: 1\r\nX-Late: forged\r\n\r\nHello there.\r\n"
    )
    proc = start_serve(tmp_path, "--config", str(config))
    try:
        port = port_of(read_until(proc, "listening on"))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("mallory@example.net", ["triage@example.com"], forged)
        first = _delivered(tmp_path, 1)[0]
        rules.write_text(
            rules.read_text(encoding="utf-8").replace(
                "rules:\n",
                "rules:\n  - name: late\n    actions:\n      - add_header: { X-Late: ours }\n",
                1,
            ),
            encoding="utf-8",
        )
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("mallory@example.net", ["triage@example.com"], forged)
        second = _delivered(tmp_path, 2)[1]
    finally:
        code, stderr = stop_serve(proc)
    assert code == 0, stderr[-2000:]
    assert "rules_reloaded" in stderr
    assert len(first.get_all("X-Triage-Priority") or []) == 1
    assert first["X-Triage-Priority"] != "high"
    assert first["X-Forged-Thing"] is None
    assert first["X-Late"] == "forged"  # no rule wrote it yet: the sender's own stays
    assert second.get_all("X-Late") == ["ours"]


@pytest.mark.parametrize("rule_set", SHIPPED)
def test_skipped_mail_reaches_its_recipients_under_every_shipped_rule_set(
    tmp_path: Path, rule_set: str
) -> None:
    """A bounce (null sender), an auto-reply and a message over classify_max_size are all
    `skipped`; each still reaches alice (Delivered-To names her, as Postfix's local
    delivery does), a copy to a review mailbox allowed."""
    config = _config(tmp_path, rule_set, extra_classifier="classify_max_size = 2000\n")
    head = "From: mailer@example.net\r\nTo: alice@example.com\r\n"
    messages = [
        ("", head + "Subject: Undelivered Mail\r\n\r\nYour mail bounced.\r\n"),
        (
            "bob@example.net",
            head + "Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nAway.\r\n",
        ),
        ("bob@example.net", head + "Subject: Big\r\n\r\n" + ("x" * 70 + "\r\n") * 100),
    ]
    proc = start_serve(tmp_path, "--config", str(config))
    try:
        port = port_of(read_until(proc, "listening on"))
        for sender, text in messages:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail(sender, ["alice@example.com"], text)
        delivered = _delivered(tmp_path, 3)
    finally:
        code, stderr = stop_serve(proc)
    assert code == 0, stderr[-2000:]
    assert len(delivered) == 3
    for message in delivered:
        assert message["X-CM-Status"].startswith("skipped"), message["X-CM-Status"]
        assert "alice@example.com" in (message.get_all("Delivered-To") or []), message["Subject"]
    assert delivered[0]["Return-Path"] == "<>"


def test_the_maildir_records_the_original_recipient_and_where_the_rules_sent_it(
    tmp_path: Path,
) -> None:
    """As Postfix's local delivery: X-Original-To names the recipient the client gave,
    Delivered-To the recipients after the rules (here a redirect to a team mailbox)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: invoices-to-ap\n"
        "    when: { label: 'Finance > Invoice' }\n"
        "    actions:\n"
        "      - redirect: [ap@example.com]\n",
        encoding="utf-8",
    )
    config = _config(tmp_path, str(rules))
    text = (
        "From: bob@example.net\r\nTo: info@example.com\r\nSubject: Invoice INV-2041\r\n\r\n"
        "Please pay invoice INV-2041, the amount due is EUR 1,200.00.\r\n"
    )
    proc = start_serve(tmp_path, "--config", str(config))
    try:
        port = port_of(read_until(proc, "listening on"))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("bob@example.net", ["info@example.com", "info@example.com"], text)
        (message,) = _delivered(tmp_path, 1)
    finally:
        code, stderr = stop_serve(proc)
    assert code == 0, stderr[-2000:]
    assert message.get_all("X-Original-To") == ["info@example.com"]
    assert message.get_all("Delivered-To") == ["ap@example.com"]
    assert message["Return-Path"] == "<bob@example.net>"


def test_a_foreground_gateway_stops_when_its_terminal_hangs_up_and_sigusr1_reloads(
    tmp_path: Path,
) -> None:
    """`cm-gateway serve` on a terminal (a pty as its controlling terminal): SIGUSR1
    reloads the rules and it goes on serving; closing the terminal (the hangup) stops it
    with exit 0 and frees the port, so the next `serve` can listen there."""
    config = _config(tmp_path, "shared-inbox-triage.yaml")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # The new session takes the pty as its controlling terminal, as a login shell's.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    try:
        port = port_of(read_until(proc, "listening on"))
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            assert client.noop()[0] == 250
        os.close(master)  # the terminal window is closed
        master = -1
        code = proc.wait(timeout=60)
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert code == 0, stderr[-2000:]
    assert "trigger=sigusr1" in stderr or '"trigger": "sigusr1"' in stderr
    assert "rules_reloaded" in stderr
    assert "shutdown_requested" in stderr and "SIGHUP" in stderr
    with socket.socket() as again:  # as the next `serve` binds it: fails while one listens
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
