"""``cm-gateway serve`` with ``[smtp] workers = 2``: the workers classify through one
batcher process (``[classifier] shared_batcher``, the default). Real processes, real
SMTP, the HTTP emulator as the API."""

from __future__ import annotations

import email
import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing import EmulatorHandle

from .ops_support import numbered_mail
from .pipeline_support import THREAD_RULES
from .serve_support import ROOT, free_port, read_until, start_serve, stop_serve

LATENCY_MS = 2000  # long enough for a dozen sessions to join the running request
pytestmark = pytest.mark.emulator(per_test=True, latency_ms=LATENCY_MS)


def launch_workers(
    tmp_path: Path,
    emu: EmulatorHandle,
    *,
    new_session: bool = True,
    env: dict[str, str] | None = None,
    extra: str = "",
    metrics: str = "",
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``serve`` with two workers on a free port (``metrics``: ``[metrics] listen``);
    returns (process, port, log) at once."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[smtp]\nlisten = '127.0.0.1:{port}'\nworkers = 2\n"
        "[downstream]\nurl = 'maildir://var/maildir'\n"
        f"[classifier]\nprovider = 'communications-mining'\nbase_url = '{emu.base_url}'\n"
        f"project = '{emu.project}'\ndataset = '{emu.dataset}'\ntimeout = 20\n"
        "max_wait_ms = 600000\ntarget_batch = 0\n"
        f"[log]\nformat = 'json'\n[metrics]\nlisten = '{metrics}'\n" + extra,
        encoding="utf-8",
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as stderr:
        proc = start_serve(
            tmp_path,
            "--config",
            str(config),
            env={"REINFER_TOKEN": emu.token or "", **(env or {})},
            stderr=stderr,
            new_session=new_session,
        )
    return proc, port, log


def start_workers(
    tmp_path: Path,
    emu: EmulatorHandle,
    *,
    new_session: bool = True,
    env: dict[str, str] | None = None,
    extra: str = "",
    metrics: str = "",
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Two workers sharing a free port and the batcher; returns (process, port, log)
    once both workers listen."""
    proc, port, log = launch_workers(
        tmp_path, emu, new_session=new_session, env=env, extra=extra, metrics=metrics
    )
    read_until(proc, "(2 workers)")
    deadline = time.monotonic() + 120
    while len(events(log, "smtp_listening")) < 2:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "workers did not listen within 120 s"
        time.sleep(0.2)
    return proc, port, log


def events(log: Path, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(x) for x in log.read_text().splitlines() if x.startswith("{"))
    return [line for line in lines if line.get("event") == name]


def send(port: int, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("alice@example.com", ["support@example.com"], content)


def send_together(port: int, contents: list[bytes]) -> None:
    """Each message on its own connection, all at once."""
    threads = [threading.Thread(target=send, args=(port, c)) for c in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_the_workers_sessions_share_one_request_and_a_retry_is_billed_once(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    proc, port, log = start_workers(tmp_path, emulator)
    try:
        # The API is idle: the first message's document goes at once, alone. The twelve
        # that arrive while it runs (2 s), on twelve connections spread over both
        # workers by the kernel, go together when it ends.
        first = threading.Thread(target=send, args=(port, numbered_mail(0)))
        first.start()
        time.sleep(0.5)
        send_together(port, [numbered_mail(n) for n in range(1, 13)])
        first.join()
        assert emulator.stats()["requests"] == 2
        workers = {line["worker"] for line in events(log, "message")}
        assert workers == {0, 1}, "the kernel gave every connection to one worker"

        # The same message again, sixteen times on new connections (an MTA retrying),
        # whichever worker takes it: one document billed. (All sixteen on one worker, which
        # would prove nothing, has a chance of 2 in 65,536.)
        billed = emulator.stats()["documents_billed"]
        for _ in range(16):
            send(port, numbered_mail(100))
        assert emulator.stats()["documents_billed"] == billed + 1
        retried = [m for m in events(log, "message") if m["message_id"] == "n100@example.com"]
        assert {m["worker"] for m in retried} == {0, 1}
    finally:
        code, _ = stop_serve(proc)
    assert code == 0
    assert len(list((tmp_path / "var" / "maildir" / "new").iterdir())) == 13 + 16
    assert not [x for x in log.read_text().splitlines() if '"level": "error"' in x]


def test_a_scrape_taken_by_either_worker_counts_every_workers_mail(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """Twelve messages on twelve connections (the kernel spreads them over both workers),
    then eight scrapes on eight connections (spread too): each shows all twelve."""
    metrics_port = free_port()
    proc, port, log = start_workers(tmp_path, emulator, metrics=f"127.0.0.1:{metrics_port}")
    try:
        send_together(port, [numbered_mail(n) for n in range(12)])
        workers = {line["worker"] for line in events(log, "message")}
        assert workers == {0, 1}, "the kernel gave every connection to one worker"
        for _ in range(8):
            with httpx.Client(timeout=10) as client:  # a new connection each time
                body = client.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            got = {
                (s.name, tuple(s.labels.items())): s.value
                for family in text_string_to_metric_families(body)
                for s in family.samples
            }
            assert got[("cm_gateway_messages_total", (("outcome", "delivered"),))] == 12
            assert got[("cm_gateway_stage_seconds_count", (("stage", "total"),))] == 12
            assert got[("cm_gateway_workers_scraped", ())] == 2
            # The batcher's requests reach the workers with its replies: one count each.
            assert got[("cm_gateway_api_requests_total", ())] == emulator.stats()["requests"]
    finally:
        code, _ = stop_serve(proc)
    assert code == 0


def test_a_reply_taken_by_either_worker_recalls_its_thread(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """With the cache in memory (the default) the batcher process keeps the conversation
    memory: an invoice, then twelve replies to it on twelve connections (the kernel
    spreads them over both workers), and every reply is recognised as the invoice's."""
    (tmp_path / "rules.yaml").write_text(THREAD_RULES, encoding="utf-8")
    rules = f"[rules]\nfiles = ['{tmp_path / 'rules.yaml'}']\n"
    proc, port, log = start_workers(tmp_path, emulator, extra=rules)
    replies = [
        (
            "From: bob@example.net\r\nTo: support@example.com\r\nSubject: Re: the note\r\n"
            f"Message-ID: <r{n}@example.com>\r\nIn-Reply-To: <n0@example.com>\r\n\r\n"
            "Thanks, see you tomorrow.\r\n"
        ).encode()
        for n in range(12)
    ]
    try:
        send(port, numbered_mail(0))
        send_together(port, replies)
        workers = {m["worker"] for m in events(log, "message") if m["message_id"][0] == "r"}
        assert workers == {0, 1}, "the kernel gave every reply to one worker"
    finally:
        code, _ = stop_serve(proc)
    assert code == 0
    stored = [
        email.message_from_bytes(f.read_bytes())
        for f in (tmp_path / "var" / "maildir" / "new").iterdir()
    ]
    assert [m["X-Queue"] for m in stored if m["Message-ID"] == "<n0@example.com>"] == ["finance"]
    followed = [m["X-Thread"] for m in stored if m["Message-ID"].startswith("<r")]
    assert followed == ["finance"] * 12


def test_a_signal_to_the_whole_process_group_still_answers_the_sessions_in_flight(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """SIGTERM to every process at once (a supervisor's group kill): the batcher keeps
    answering until the workers have drained, so the message in flight is classified."""
    proc, port, log = start_workers(tmp_path, emulator, new_session=True)
    sender = threading.Thread(target=send, args=(port, numbered_mail(1)))
    sender.start()
    deadline = time.monotonic() + 30
    while emulator.stats()["requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # while the request runs (2 s)
    sender.join()
    code, _ = stop_serve(proc, signal.SIGTERM)
    assert code == 0
    (done,) = events(log, "message")
    assert done["status"] == "classified"
    # Each worker had it twice (the group's, and the parent's forward): one request.
    assert not events(log, "shutdown_forced")
    assert events(log, "batcher_stopped")


def test_the_gateway_stops_when_the_batcher_process_dies(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """A dead batcher would leave every worker unable to classify: the parent stops the
    workers and exits 1 rather than run degraded."""
    proc, _port, log = start_workers(tmp_path, emulator)
    (ready,) = events(log, "batcher_ready")
    os.kill(ready["pid"], signal.SIGKILL)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1
    (exited,) = events(log, "batcher_exited")
    assert exited["exitcode"] == -signal.SIGKILL


def test_a_batcher_that_cannot_start_fails_the_start_with_exit_2(tmp_path: Path) -> None:
    """No API token: the batcher process names the missing variable, and ``serve``
    exits 2 (a configuration error) before any worker starts."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[smtp]\nlisten = '127.0.0.1:{free_port()}'\nworkers = 2\n"
        "[downstream]\nurl = 'maildir://var/maildir'\n"
        "[classifier]\nprovider = 'communications-mining'\nbase_url = 'http://127.0.0.1:9'\n"
        "project = 'acme'\ndataset = 'inbox'\ntoken_env = 'CMGW_ABSENT_TOKEN'\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k != "CMGW_ABSENT_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "CMGW_ABSENT_TOKEN" in proc.stderr
    assert "workers_started" not in proc.stderr


def test_a_tmpdir_too_deep_for_a_unix_socket_still_starts_the_batcher(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """$TMPDIR 150 octets deep: the socket's path would not fit in sun_path (108), so the
    private directory goes to /tmp, and a message is classified through the batcher."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(os.fsencode(deep)) > 110
    proc, port, log = start_workers(tmp_path, emulator, env={"TMPDIR": str(deep)})
    try:
        send(port, numbered_mail(1))
    finally:
        assert stop_serve(proc)[0] == 0, log.read_text()
    assert events(log, "batcher_socket_in_tmp")
    assert emulator.stats()["documents_billed"] == 1
    assert not list(deep.iterdir())  # nothing was made there


def _processes_with_env(entry: bytes) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if entry in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue  # gone, or not ours to read
    return found


def test_a_stop_while_the_batcher_starts_ends_it_and_removes_its_directory(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    """SIGTERM as soon as the parent starts the batcher (spawning it takes a second or
    more): exit 0, no process left behind, and the private directory removed."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc, _, log = launch_workers(tmp_path, emulator, env={"TMPDIR": str(tmpdir)})
    deadline = time.monotonic() + 60
    while not events(log, "batcher_starting"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the batcher did not start within 60 s"
        time.sleep(0.01)
    assert stop_serve(proc)[0] == 0, log.read_text()
    assert events(log, "stopped_while_starting"), log.read_text()
    assert not list(tmpdir.iterdir())
    time.sleep(0.5)  # a terminated child may take a moment to be reaped by init
    assert _processes_with_env(f"TMPDIR={tmpdir}".encode()) == []
