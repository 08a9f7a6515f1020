"""``cm-gateway classify`` as a subprocess against the emulator over real HTTP: batching
(and the bill), JSON lines, broken files, failed batches, rules decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.testing import EmulatorHandle

TOKEN = "cli-token-8d2e41"
pytestmark = pytest.mark.emulator(per_test=True, token=TOKEN)
TOPICS = [
    ("Invoice INV-{n:06d}", "Please find attached invoice INV-{n:06d} for {n} EUR."),
    ("Refund for order ORD-{n:06d}", "I would like a refund for order ORD-{n:06d}, thank you."),
    ("Password reset", "I need a password reset, my access to the portal is gone ({n})."),
    ("Complaint", "This is unacceptable, I am very disappointed with order ORD-{n:06d}."),
    ("Lunch?", "Shall we meet for lunch on day {n}?"),
]


def synth(n: int) -> bytes:
    subject, body = TOPICS[n % len(TOPICS)]
    return (
        f"From: Customer {n} <customer{n}@example.com>\r\n"
        f"To: support@acme.example\r\n"
        f"Subject: {subject.format(n=n)}\r\n"
        f"Message-ID: <msg-{n}@example.com>\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        f"\r\n{body.format(n=n)}\r\n"
    ).encode()


def make_maildir(root: Path, count: int) -> Path:
    box = root / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    for n in range(count):
        sub = "cur" if n % 2 else "new"
        name = f"17000{n:05d}.M{n}P1.host" + (":2,S" if sub == "cur" else "")
        (box / sub / name).write_bytes(synth(n))
    return box


def write_config(path: Path, base_url: str, *, rules: str = "", **overrides: object) -> Path:
    settings: dict[str, object] = {
        "provider": "communications-mining",
        "base_url": base_url,
        "project": "acme",
        "dataset": "inbox",
        "token_env": "CMGW_TEST_TOKEN",
        "max_batch": 64,
        "max_in_flight": 4,
        "timeout": 20,
        **overrides,
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path.write_text("[classifier]\n" + "\n".join(lines) + f"\n\n[rules]\nfiles = [{rules}]\n")
    return path


def classify(
    *args: str, token: str = TOKEN, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CMGW_TEST_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "classify", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[str]:
    """``python -m gateway emulate --port 0`` as a subprocess; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "emulate", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def stats(base_url: str) -> dict[str, int]:
    data: dict[str, int] = httpx.get(f"{base_url}/_emulator/stats").json()
    return data


def test_a_maildir_of_500_messages_is_classified_in_at_most_8_batches(
    tmp_path: Path, emulator_process: str
) -> None:
    """500 messages, max_batch 64: 500 JSON lines, exactly 500 documents billed, <= 8 calls."""
    box = make_maildir(tmp_path, 500)
    config = write_config(tmp_path / "gw.toml", emulator_process)
    httpx.post(f"{emulator_process}/_emulator/reset")
    started = time.monotonic()
    result = classify(str(box), "--config", str(config), "--json")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 500
    assert {line["status"] for line in lines} == {"classified"}
    assert len({line["source"] for line in lines}) == 500
    assert all(line["source"].startswith(f"{box}#") for line in lines)
    invoices = [line for line in lines if line["message_id"] == "msg-0@example.com"]
    assert invoices[0]["labels"][0]["name"].startswith("Finance")
    assert {"kind": "invoice-number", "value": "INV-000000"} in invoices[0]["entities"]
    ledger = stats(emulator_process)
    assert ledger["documents_billed"] == 500
    assert ledger["requests"] <= 8
    print(f"classify 500 messages: {elapsed:.1f}s wall, {ledger['requests']} requests")


def test_a_broken_file_is_skipped_with_a_message_and_the_rest_classified(
    tmp_path: Path, emulator_process: str
) -> None:
    """A binary file among good ones: named on stderr, skipped; the others classified."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.eml").write_bytes(synth(0))
    (folder / "b-broken.eml").write_bytes(b"\x00\x01\x02 not mail" * 50)
    (folder / "c.mbox").write_bytes(b"From x\n" + synth(1) + b"\nFrom y\n" + synth(2))
    config = write_config(tmp_path / "gw.toml", emulator_process)
    result = classify(str(folder), "--config", str(config), "--json")
    assert result.returncode == 1  # not everything given could be classified
    assert "b-broken.eml" in result.stderr and "skipped" in result.stderr
    sources = [json.loads(line)["source"] for line in result.stdout.splitlines()]
    assert sources == [str(folder / "a.eml"), f"{folder / 'c.mbox'}#0", f"{folder / 'c.mbox'}#1"]


def test_a_failed_batch_marks_its_messages_unclassified_and_the_run_goes_on(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """Every call fails 503 (retries spent): every message unclassified; reason=server-error."""
    emu.set_faults(fail_rate=1.0, fail_status="503")
    box = make_maildir(tmp_path, 70)
    config = write_config(tmp_path / "gw.toml", emu.base_url, timeout=10)
    result = classify(str(box), "--config", str(config), "--json")
    assert result.returncode == 1
    statuses = [json.loads(line)["status"] for line in result.stdout.splitlines()]
    assert statuses == ["unclassified; reason=server-error"] * 70
    assert "server-error" in result.stderr
    assert emu.stats()["requests_by_route"]["predict-raw-emails"] >= 2  # both batches tried


def test_after_an_auth_failure_no_further_batch_is_sent(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """A wrong token: the first batch gets 401, the others are not sent; all unclassified."""
    box = make_maildir(tmp_path, 200)
    config = write_config(tmp_path / "gw.toml", emu.base_url, max_in_flight=1)
    result = classify(str(box), "--config", str(config), "--json", token="not-the-token")
    assert result.returncode == 1
    statuses = {json.loads(line)["status"] for line in result.stdout.splitlines()}
    assert statuses == {"unclassified; reason=auth"}
    assert emu.stats()["requests"] == 1
    assert "not-the-token" not in result.stderr + result.stdout


def test_rules_add_a_decision_and_text_mode_prints_one_line_per_message(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """--rules FILE: each JSON line carries the decision; without --json, one table line."""
    rules = tmp_path / "r.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: invoices-to-ap\n"
        "    when: { label: 'Finance > Invoice', min_probability: 0.5 }\n"
        "    actions:\n"
        "      - redirect: [ap@example.com]\n"
    )
    eml = tmp_path / "invoice.eml"
    eml.write_bytes(synth(0))
    config = write_config(tmp_path / "gw.toml", emu.base_url)
    as_json = classify(str(eml), "--config", str(config), "--rules", str(rules), "--json")
    assert as_json.returncode == 0, as_json.stderr
    decision = json.loads(as_json.stdout)["decision"]
    assert decision["verdict"] == "deliver"
    assert decision["rules"] == ["invoices-to-ap"]
    assert decision["recipients"] == ["ap@example.com"]
    no_rules = classify(str(eml), "--config", str(config), "--json")
    assert "decision" not in json.loads(no_rules.stdout)
    text = classify(str(eml), "--config", str(config), "--rules", str(rules))
    (line,) = text.stdout.splitlines()
    assert line.startswith(str(eml)) and "Finance > Invoice" in line
    assert "-> deliver (invoices-to-ap)" in line


def test_a_missing_token_exits_2_naming_the_setting(tmp_path: Path, emu: EmulatorHandle) -> None:
    """No token in the environment: exit 2, stderr names classifier.token_env and the var."""
    eml = tmp_path / "a.eml"
    eml.write_bytes(synth(0))
    config = write_config(tmp_path / "gw.toml", emu.base_url)
    result = classify(str(eml), "--config", str(config), token="")
    assert result.returncode == 2
    assert "classifier.token_env" in result.stderr and "CMGW_TEST_TOKEN" in result.stderr
