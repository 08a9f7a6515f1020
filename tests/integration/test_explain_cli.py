"""``cm-gateway explain`` through the command line: a real ``python -m gateway`` process
for the main paths, ``gateway.cli._main.main`` in-process for the rest."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "rulesets"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CM_GATEWAY_")},
    )


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``explain`` configures logging for the process: undo it after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
def explain(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> Any:
    monkeypatch.chdir(ROOT)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["explain", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def case(ruleset: str, name: str) -> Path:
    return FIXTURES / ruleset / name


def test_explain_text_with_a_predictions_file_shows_every_rule_and_the_result() -> None:
    """Payload, the file's labels, each rule's verdict and why, recipients and headers."""
    here = case("inline-routing", "invoice-to-ap")
    result = cli(
        "explain",
        str(here / "message.eml"),
        "--rules",
        "rules/inline-routing.yaml",
        "--predictions",
        str(here / "predictions.json"),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Invoice INV-20240117 for April" in out
    assert "inv-0001@mail.example.net" in out
    assert f"Predictions (file {here / 'predictions.json'})" in out
    assert "Finance > Invoice (0.91)" in out
    assert "invoices-to-ap" in out and "matched" in out
    assert "label 'Finance > Invoice' probability 0.91 >= 0.7" in out
    assert "actions: add_header X-Triage-Queue: accounts-payable; redirect -> ap@example.com" in out
    assert out.count("skipped (after stop)") == 6
    assert "envelope to      info@example.com (assumed: To and Cc)" in out
    assert "recipients       ap@example.com\n" in out
    assert "    X-CM-Rules: invoices-to-ap\n" in out
    assert "    X-Triage-Queue: accounts-payable\n" in out
    assert "\x1b[" not in out  # no colour when not a TTY


def test_explain_json_accepts_a_whole_predict_raw_emails_response() -> None:
    """--json is one object; a saved API response with one document is a valid input."""
    here = case("inline-routing", "refund-to-refunds")
    assert "status" in json.loads((here / "predictions.json").read_text())
    result = cli(
        "explain",
        str(here / "message.eml"),
        "--rules",
        "rules/inline-routing.yaml",
        "--predictions",
        str(here / "predictions.json"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["classification"]["model_version"] == 7
    labels = report["classification"]["prediction"]["labels"]
    assert {"name": "Finance > Refund", "probability": 0.86} in labels
    verdicts = {v["rule"]: v["result"] for v in report["rules"]["verdicts"]}
    assert verdicts["invoices-to-ap"] == "not matched"
    assert verdicts["refunds-to-refunds-desk"] == "matched"
    assert verdicts["unrouted"] == "skipped (after stop)"
    assert report["envelope"]["assumed"] is True
    assert report["envelope"]["rcpt_tos"] == ["info@example.com"]
    assert report["decision"]["verdict"] == "deliver"
    assert report["decision"]["recipients"] == ["refunds@example.com"]
    assert ["X-CM-Model", "7"] in report["decision"]["headers"]
    assert ["X-Triage-Queue", "refunds"] in report["decision"]["headers"]
    assert report["payload"]["attachments"] == []


def test_explain_text_with_the_emulator_model_tags_an_angry_complaint() -> None:
    """No --predictions and no config: the in-process emulator classifies the message."""
    here = case("shared-inbox-triage", "angry-complaint")
    result = cli("explain", str(here / "message.eml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Predictions (emulator: built-in keyword model, NOT a real" in out
    assert "Customer Service > Complaint" in out
    assert "subject          [Complaint] Terrible service" in out
    assert "recipients       team@example.com, quality@example.com" in out
    assert "    X-Triage-SLA: 4h\n" in out


def test_explain_json_with_the_emulator_quarantines_card_data_and_masks_the_number() -> None:
    """Compliance rules + emulator: quarantine; the card number appears nowhere in full."""
    here = case("compliance-tagging", "card-number-quarantined")
    result = cli(
        "explain", str(here / "message.eml"), "--rules", "rules/compliance-tagging.yaml", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["decision"]["verdict"] == "quarantine"
    assert report["decision"]["recipients"] == ["quarantine@example.com"]
    assert ["X-Compliance-Tags", "pci"] in report["decision"]["headers"]
    entities = report["classification"]["prediction"]["entities"]
    assert {"kind": "credit-card", "value": "************1111"} in entities
    assert "4111111111111111" not in result.stdout
    assert "4111 1111 1111 1111" not in result.stdout


def test_explain_of_an_unclassified_message_shows_the_review_copy(explain: Any) -> None:
    """{"unclassified": reason} explains the message as the classifier failing: it still
    reaches its recipient, with a copy to review@."""
    here = case("shared-inbox-triage", "unclassified-review")
    code, out, _ = explain(
        str(here / "message.eml"), "--predictions", str(here / "predictions.json"), "--json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["classification"]["status"] == "unclassified; reason=timeout"
    assert report["classification"]["prediction"] is None
    assert report["decision"]["recipients"] == ["team@example.com", "review@example.com"]
    assert ["X-CM-Status", "unclassified; reason=timeout"] in report["decision"]["headers"]


def test_explain_refuses_a_broken_predictions_file_with_its_position(
    explain: Any, tmp_path: Path
) -> None:
    """Bad JSON: file:line:col on stderr, exit 2."""
    bad = tmp_path / "pred.json"
    bad.write_text('{"labels": [\n  {"name": ["Urgent"], "probability": 0.9,}\n]}\n')
    here = case("shared-inbox-triage", "urgent-incident")
    code, out, err = explain(str(here / "message.eml"), "--predictions", str(bad))
    assert code == 2
    assert f"{bad}:2:" in err and "not JSON" in err
    assert out == ""


def test_explain_writes_model_text_into_headers_only_sanitized(
    explain: Any, tmp_path: Path
) -> None:
    """A label name with CR/LF and non-ASCII text cannot inject a header line."""
    pred = tmp_path / "pred.json"
    evil = "Rückerstattung\r\nBcc: victim@example.net"
    pred.write_text(json.dumps({"labels": [{"name": ["Finance", evil], "probability": 0.9}]}))
    here = case("shared-inbox-triage", "invoice-normal")
    code, out, _ = explain(str(here / "message.eml"), "--predictions", str(pred), "--json")
    assert code == 0
    headers = json.loads(out)["decision"]["headers"]
    for _name, value in headers:
        assert value.isascii()
        assert "\n" not in value.replace("\r\n ", "").replace("\r\n\t", "")
        assert "\r" not in value.replace("\r\n ", "").replace("\r\n\t", "")
    labels = dict(headers)["X-CM-Labels"]
    assert "=?utf-8?" in labels.lower()
    assert not any(line.lstrip().lower().startswith("bcc:") for line in labels.split("\r\n"))


def test_explain_shows_a_short_preview_never_the_whole_body(explain: Any, tmp_path: Path) -> None:
    """The preview is at most 200 characters; text past it is not printed."""
    mail = tmp_path / "long.eml"
    body = "Please send the invoice. " + "filler words " * 100 + "SECRET-TAIL-MARKER"
    mail.write_bytes(
        b"From: a@example.org\r\nTo: b@example.com\r\nSubject: long\r\n\r\n" + body.encode()
    )
    code, out, _ = explain(str(mail), "--json")
    assert code == 0
    report = json.loads(out)
    assert len(report["payload"]["preview"]) <= 200
    assert report["payload"]["body"]["plain_chars"] == len(body)
    assert "SECRET-TAIL-MARKER" not in out


def test_explain_with_an_unreachable_model_and_on_error_defer_says_451(
    explain: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier failure is explained as the gateway handles it: defer, exit 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "gw.toml"
    config.write_text(
        "[classifier]\n"
        'provider = "communications-mining"\n'
        f'base_url = "http://127.0.0.1:{port}"\n'
        'project = "acme"\n'
        'dataset = "inbox"\n'
        'token_env = "CM_TEST_EXPLAIN_TOKEN"\n'
        "timeout = 1.0\n"
        'on_error = "defer"\n'
    )
    monkeypatch.setenv("CM_TEST_EXPLAIN_TOKEN", "t")
    here = case("shared-inbox-triage", "invoice-normal")
    code, out, _ = explain(str(here / "message.eml"), "-c", str(config), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["classification"]["status"].startswith("unclassified; reason=")
    assert report["classification"]["error"]
    assert report["decision"]["verdict"] == "defer"
    assert report["decision"]["reply"].startswith("451 ")
