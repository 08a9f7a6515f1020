"""Cost under re-sending: a message the API answered before is never billed again by the
seed's rule (1 AI unit per created comment, or per updated comment, by the email's
Message ID, if its text changed), whichever worker sends it and after a restart that
emptied every memory cache. Real ``serve`` processes, real SMTP, the HTTP emulator."""

from __future__ import annotations

import json
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Any

from gateway.testing import running_emulator

from .ops_support import numbered_mail
from .serve_support import free_port, read_until, start_serve, stop_serve


def start(
    tmp_path: Path,
    base_url: str,
    token: str,
    port: int,
    log: Path,
    *,
    workers: int = 2,
    extra: str = "",
) -> subprocess.Popen[bytes]:
    """``workers`` processes, each with its own batcher and cache (no shared batcher)."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[smtp]\nlisten = '127.0.0.1:{port}'\nworkers = {workers}\n"
        "[downstream]\nurl = 'maildir://var/maildir'\n"
        f"[classifier]\nprovider = 'communications-mining'\nbase_url = '{base_url}'\n"
        "project = 'acme'\ndataset = 'inbox'\ntimeout = 20\nshared_batcher = false\n"
        "[log]\nformat = 'json'\n[metrics]\nlisten = ''\n" + extra,
        encoding="utf-8",
    )
    with log.open("wb") as stderr:
        proc = start_serve(
            tmp_path, "--config", str(config), env={"REINFER_TOKEN": token}, stderr=stderr
        )
    if workers > 1:
        read_until(proc, f"({workers} workers)")
    deadline = time.monotonic() + 120
    while log.read_text().count('"smtp_listening"') < workers:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "workers did not listen within 120 s"
        time.sleep(0.2)
    return proc


def send(port: int, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("alice@example.com", ["support@example.com"], content)


def workers_of(log: Path, message_id: str) -> set[Any]:
    lines = log.read_text().splitlines()
    events = (json.loads(x) for x in lines if x.startswith("{"))
    return {e.get("worker") for e in events if e.get("message_id") == message_id}


def test_a_resent_message_is_billed_once_across_workers_and_restarts(tmp_path: Path) -> None:
    with running_emulator() as emu:
        port = free_port()
        first = tmp_path / "first.log"
        proc = start(tmp_path, emu.base_url, emu.token or "x", port, first)
        try:
            for _ in range(16):  # new connections: the kernel spreads them over both workers
                send(port, numbered_mail(7))
            assert workers_of(first, "n7@example.com") == {0, 1}
        finally:
            assert stop_serve(proc)[0] == 0
        before = emu.stats()
        # Each worker's own cache answered its repeats: the API saw the message twice.
        assert before["documents_sent"] == 2
        assert before["ai_units"] == 1

        second = tmp_path / "second.log"
        proc = start(tmp_path, emu.base_url, emu.token or "x", port, second)  # empty caches
        try:
            send(port, numbered_mail(7))
            send(port, numbered_mail(7, body="Please pay the invoice: the amount changed."))
        finally:
            assert stop_serve(proc)[0] == 0
        after = emu.stats()
    assert after["documents_sent"] == 4
    # The same text again costs nothing; the changed text is an updated comment: 1 unit.
    assert after["ai_units"] == 2
    assert after["ai_units_by_comment_id"] == {"n7@example.com": 2}


def test_with_a_sqlite_cache_a_message_retried_after_a_restart_is_not_sent_again(
    tmp_path: Path,
) -> None:
    """``[cache] url = "sqlite://..."``: the restarted gateway answers the retry from the
    file; the API sees the message once."""
    cache = f"[cache]\nurl = 'sqlite://{tmp_path}/state/dedup.db'\n"
    with running_emulator() as emu:
        port = free_port()
        for run in ("first", "second"):
            log = tmp_path / f"{run}.log"
            proc = start(
                tmp_path, emu.base_url, emu.token or "x", port, log, workers=1, extra=cache
            )
            try:
                send(port, numbered_mail(8))
            finally:
                assert stop_serve(proc)[0] == 0
        stats = emu.stats()
    assert stats["documents_sent"] == 1 and stats["ai_units"] == 1
    assert (tmp_path / "state" / "dedup.db").exists()
