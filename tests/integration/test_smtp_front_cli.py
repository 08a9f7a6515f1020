"""``cm-gateway serve`` as a real process: start-up output, delivery, signals, exit codes."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import NextHopSink, SinkBehaviour, running_sink

from .serve_support import free_port, port_of, read_until, start_serve, stop_serve

ROOT = Path(__file__).resolve().parents[2]
SUBJECT_BODY = b"Subject: Invoice INV-2041 overdue\r\n\r\nPlease pay invoice INV-2041.\r\n"


@pytest.fixture
def slow_sink() -> Iterator[NextHopSink]:
    """A next hop that takes 2 s to accept DATA."""
    with running_sink(SinkBehaviour(data_delay=2.0)) as sink:
        yield sink


def test_embedded_default_prints_how_to_delivers_reloads_on_sighup_exits_0(tmp_path: Path):
    """`cm-gateway serve` with no config prints where it listens and how to send a test
    mail; the printed Python one-liner works and the message lands in ./var/maildir;
    SIGHUP reloads the rules; SIGTERM exits 0."""
    proc = start_serve(tmp_path, env={"CM_GATEWAY_SMTP_LISTEN": "127.0.0.1:0"})
    try:
        lines = read_until(proc, "Stop with Ctrl-C.")
        port = port_of(lines)
        swaks = next(x for x in lines if x.strip().startswith("swaks "))
        assert f"--server 127.0.0.1:{port}" in swaks
        one_liner = next(x for x in lines if x.strip().startswith("python3 -c "))
        assert f"{tmp_path.resolve()}/var/maildir/new" in "\n".join(lines)
        command = one_liner.strip().replace("python3", sys.executable, 1)
        subprocess.run(command, shell=True, check=True, cwd=tmp_path, timeout=60)
        delivered = list((tmp_path / "var" / "maildir" / "new").iterdir())
        assert len(delivered) == 1
        assert b"Subject: " in delivered[0].read_bytes()
        proc.send_signal(signal.SIGHUP)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            assert client.noop()[0] == 250
    finally:
        code, stderr = stop_serve(proc)
    assert code == 0
    assert "rules_reloaded" in stderr
    assert "smtp_stopped" in stderr


def test_sigterm_during_slow_data_lets_it_finish_with_250_then_exits_0(
    tmp_path: Path, slow_sink: NextHopSink
):
    """SIGTERM while a message is being relayed to a slow next hop: the client still gets
    its 250 (the message was handed over), then 421 4.3.2, and the process exits 0."""
    sink, sink_port = slow_sink, slow_sink.port
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[smtp]\nlisten = '127.0.0.1:0'\nhostname = 'gw.test'\ntimeout = 60\n"
        f"[downstream]\nurl = 'smtp://127.0.0.1:{sink_port}'\ntimeout = 20\n"
        "[classifier]\nprovider = 'emulator'\ntimeout = 5\n",
        encoding="utf-8",
    )
    proc = start_serve(tmp_path, "--config", str(config))
    try:
        port = port_of(read_until(proc, "cm-gateway listening on"))
        result: dict[str, Any] = {}

        def client() -> None:
            smtp = smtplib.SMTP("127.0.0.1", port, timeout=60)
            try:
                smtp.ehlo("client.test")
                smtp.mail("alice@example.net")
                smtp.rcpt("triage@example.com")
                result["data"] = smtp.data(SUBJECT_BODY)
                # After its reply the draining server says goodbye on its own.
                result["after"] = smtp.getreply()
            except Exception as exc:  # reported by the assertion below
                result["error"] = repr(exc)
            finally:
                smtp.close()

        thread = threading.Thread(target=client)
        thread.start()
        sink.wait_for_command("DATA", timeout=60)  # the message reached the next hop
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        _, raw_stderr = proc.communicate(timeout=60)
        code, stderr = proc.returncode, raw_stderr.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "error" not in result, result
    assert result["data"][0] == 250 and result["data"][1].startswith(b"2.0.0 Ok: queued as")
    assert result["after"] == (421, b"4.3.2 Service shutting down")
    assert len(sink.messages) == 1
    assert code == 0, stderr[-2000:]
    assert '"in_data": 1' in stderr or "in_data=1" in stderr


def test_config_errors_exit_2_before_listening(tmp_path: Path):
    """A missing TLS certificate file exits 2 with the file named, before listening."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[smtp]\nlisten = '127.0.0.1:0'\n"
        f"tls_cert_file = '{tmp_path}/missing.pem'\ntls_key_file = '{tmp_path}/missing.key'\n"
        "[downstream]\nurl = 'maildir://var/maildir'\n[classifier]\nprovider = 'emulator'\n",
        encoding="utf-8",
    )
    proc = start_serve(tmp_path, "--config", str(config))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert b"missing.pem" in stderr
    assert b"listening" not in stdout


def two_workers(tmp_path: Path, extra: str = "") -> tuple[Path, int]:
    """A config for two workers on a free port, the emulator, a Maildir; (path, port)."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[smtp]\nlisten = '127.0.0.1:{port}'\nworkers = 2\n"
        "[downstream]\nurl = 'maildir://var/maildir'\n[classifier]\nprovider = 'emulator'\n"
        + extra,
        encoding="utf-8",
    )
    return config, port


@pytest.mark.parametrize("shared_batcher", ["true", "false"])
def test_workers_share_the_port_and_stop_together(tmp_path: Path, shared_batcher: str):
    """workers = 2: two processes serve one port (SO_REUSEPORT); the banner comes once
    both listen, so mail is accepted at once; SIGTERM stops both and the parent exits 0;
    with or without the shared batcher."""
    config, port = two_workers(tmp_path, f"shared_batcher = {shared_batcher}\n")
    proc = start_serve(tmp_path, "--config", str(config))
    try:
        read_until(proc, "(2 workers)")
        for _ in range(4):  # new connections: the kernel spreads them over both workers
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("alice@example.net", ["triage@example.com"], SUBJECT_BODY)
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) >= (3 if shared_batcher == "true" else 2)
    finally:
        code, _ = stop_serve(proc)
    assert code == 0
    assert len(list((tmp_path / "var" / "maildir" / "new").iterdir())) == 4


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie serves nothing; its new parent reaps it


def test_the_workers_and_the_batcher_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the parent alone (the OOM killer's choice): its workers and the batcher
    notice within seconds and stop, so nothing keeps serving the port unsupervised beside
    the gateway started in its place."""
    config, port = two_workers(tmp_path, "[log]\nformat = 'json'\n[metrics]\nlisten = ''\n")
    log = tmp_path / "gateway.log"
    with log.open("wb") as stderr:
        proc = start_serve(tmp_path, "--config", str(config), stderr=stderr)
    try:
        read_until(proc, "(2 workers)")
        deadline = time.monotonic() + 120
        while log.read_text().count('"smtp_listening"') < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        children = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while not all(_gone(pid) for pid in children):
            assert time.monotonic() < deadline, "a child of the killed parent lives on"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert text.count('"worker_parent_gone"') == 2
    assert '"batcher_parent_gone"' in text
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_worker_that_cannot_start_fails_the_gateway_with_exit_2_and_no_banner(
    tmp_path: Path,
) -> None:
    """A rule file that does not compile is found by each worker as it builds its
    pipeline (the parent reads only the config): the gateway exits 2, as one process
    does, names the file, and never says it listens."""
    (tmp_path / "rules.yaml").write_text("rules:\n  - name: x\n    when: { nope: 1 }\n")
    config, _ = two_workers(tmp_path, "[rules]\nfiles = ['rules.yaml']\n[metrics]\nlisten = ''\n")
    proc = start_serve(tmp_path, "--config", str(config))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr.decode()
    assert b"rules.yaml" in stderr
    assert b"listening" not in stdout
