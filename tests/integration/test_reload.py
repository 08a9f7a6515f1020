"""Rule hot reload of ``cm-gateway serve`` as a real process: SIGHUP and the mtime poll."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.documents import RawEmailDocument
from gateway.mail import header_fields
from gateway.pipeline import build_processor
from gateway.predictions import PredictionBatch
from gateway.testing import running_sink

from .pipeline_support import FixedClassifier, inbound, mail, make_config

ROOT = Path(__file__).resolve().parents[2]
MAIL = b"Subject: Hello\r\n\r\nJust saying hello.\r\n"


def _rules(value: str) -> str:
    return (
        "rules:\n"
        f"  - name: route-{value}\n"
        "    when:\n"
        "      from: '*'\n"
        "    actions:\n"
        f"      - add_header: {{ X-Route: {value} }}\n"
    )


BROKEN = "rules:\n  - name: broken\n    when:\n      no_such_condition: 1\n    actions: []\n"


class _Gateway:
    """``python -m gateway serve`` with its stderr collected by a thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.rules = tmp_path / "rules.yaml"
        self.rules.write_text(_rules("a"), encoding="utf-8")
        config = tmp_path / "gateway.toml"
        config.write_text(
            "[smtp]\nlisten = '127.0.0.1:0'\n"
            "[downstream]\nurl = 'maildir://var/maildir'\n"
            "[classifier]\nprovider = 'emulator'\n"
            f"[rules]\nfiles = ['{self.rules}']\n",
            encoding="utf-8",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # no controlling terminal: SIGHUP reloads (as under systemd)
        )
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.port = self._wait_listening()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self._stderr.append(raw.decode(errors="replace"))

    def stderr(self) -> list[str]:
        with self._lock:
            return list(self._stderr)

    def _wait_listening(self, timeout: float = 60.0) -> int:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and b"\n" not in data.split(b"listening on ")[-1]:
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
            elif self.proc.poll() is not None:
                break
        for line in data.decode().splitlines():
            if line.startswith("cm-gateway listening on "):
                return int(line.rsplit(":", 1)[1].split()[0])
        raise AssertionError(f"not listening: {data!r}; stderr {''.join(self.stderr())[-2000:]}")

    def wait_log(self, event: str, count: int, timeout: float = 20.0) -> list[str]:
        """The lines containing ``event`` once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [x for x in self.stderr() if event in x]
            if len(lines) >= count:
                return lines
            time.sleep(0.05)
        raise AssertionError(f"{count} x {event!r} not logged: {''.join(self.stderr())[-3000:]}")

    def send(self) -> bytes:
        """Send one mail; the delivered copy."""
        new = self.tmp_path / "var" / "maildir" / "new"
        before = set(new.iterdir()) if new.is_dir() else set()
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.sendmail("alice@example.net", ["triage@example.com"], MAIL)
        (added,) = set(new.iterdir()) - before
        return added.read_bytes()

    def rewrite(self, text: str) -> None:
        """Replace the rules file atomically with a visibly different mtime."""
        tmp = self.rules.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        stamp = time.time() + 5 * len(self.stderr())  # never the same mtime twice
        os.utime(tmp, (stamp, stamp))
        tmp.replace(self.rules)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(timeout=10)
        return code


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[_Gateway]:
    gw = _Gateway(tmp_path)
    try:
        yield gw
    finally:
        if gw.proc.poll() is None:
            gw.stop()


def test_sighup_swaps_rules_and_a_broken_file_keeps_the_old_ones(gateway: _Gateway) -> None:
    """SIGHUP loads the new rules; a broken file logs file:line and keeps the last good ones."""
    assert b"X-Route: a" in gateway.send()

    gateway.rewrite(_rules("b"))
    gateway.proc.send_signal(signal.SIGHUP)
    (reloaded,) = gateway.wait_log("rules_reloaded", 1)
    assert str(gateway.rules) in reloaded
    assert "rules=1" in reloaded or '"rules": 1' in reloaded
    copy = gateway.send()
    assert b"X-Route: b" in copy and b"X-Route: a" not in copy

    gateway.rewrite(BROKEN)
    gateway.proc.send_signal(signal.SIGHUP)
    (failed,) = gateway.wait_log("rules_reload_failed", 1)
    assert f"{gateway.rules}:4:" in failed
    assert "Traceback" not in "".join(gateway.stderr())
    assert b"X-Route: b" in gateway.send()
    assert gateway.stop() == 0
    assert len([x for x in gateway.stderr() if "rules_reload" in x]) == 2


def test_changed_rule_file_is_reloaded_without_a_signal(gateway: _Gateway) -> None:
    """A rewrite of the rules file is picked up by the mtime poll within a few seconds."""
    assert b"X-Route: a" in gateway.send()
    gateway.rewrite(_rules("b"))
    (reloaded,) = gateway.wait_log("rules_reloaded", 1, timeout=10)
    assert "file-changed" in reloaded
    assert b"X-Route: b" in gateway.send()


class _GatedClassifier(FixedClassifier):
    """Holds every prediction until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        self.entered.set()
        await self.gate.wait()
        return await super().predict_raw_emails(documents)


async def test_message_in_flight_keeps_the_rules_it_started_with(tmp_path: Path) -> None:
    """A reload while a message is being classified applies from the next message on."""
    classifier = _GatedClassifier()
    with running_sink() as sink:
        config = make_config(tmp_path, downstream=sink.url, rules_yaml=_rules("a"))
        pipeline = build_processor(config, classifier=classifier)
        try:
            first = asyncio.create_task(pipeline.process(inbound(mail())))
            await classifier.entered.wait()
            (tmp_path / "rules.yaml").write_text(_rules("b"), encoding="utf-8")
            assert pipeline.reload_rules(trigger="test")
            classifier.gate.set()
            assert (await first).code == 250
            assert (await pipeline.process(inbound(mail(), queue_id="4QTEST2"))).code == 250
        finally:
            await pipeline.aclose()
    routes = [[v for n, v in header_fields(m.content) if n == "X-Route"] for m in sink.received]
    assert routes == [["a"], ["b"]]


async def test_failed_reload_keeps_the_old_ruleset_and_counts_it(tmp_path: Path) -> None:
    """A broken file: reload_rules() is False, the same RuleSet stays, reload_failures grows."""
    with running_sink() as sink:
        config = make_config(tmp_path, downstream=sink.url, rules_yaml=_rules("a"))
        pipeline = build_processor(config, classifier=FixedClassifier())
        try:
            old = pipeline.rules
            (tmp_path / "rules.yaml").write_text(BROKEN, encoding="utf-8")
            with capture_logs() as logs:
                assert not pipeline.reload_rules()
            assert pipeline.rules is old
            assert pipeline.reload_failures == 1
            (event,) = [e for e in logs if e["event"] == "rules_reload_failed"]
            assert event["file"] == str(tmp_path / "rules.yaml") and event["where"] == "4:7"
            (tmp_path / "rules.yaml").write_text(_rules("b"), encoding="utf-8")
            assert pipeline.reload_rules()
            assert pipeline.rules is not old and pipeline.reload_failures == 1
        finally:
            await pipeline.aclose()
