"""The CLI in an administrator's first hour (issue 19): ``config check`` checks what
``serve`` would, relative paths mean the config's folder, and the rough edges."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import smtplib
import socket
import subprocess
import sys
import threading
from pathlib import Path

from gateway.cli._main import build_parser

from .serve_support import ROOT, port_of, read_until, stop_serve

BASE = "[downstream]\nurl = 'maildir://var/maildir'\n[classifier]\nprovider = 'emulator'\n"


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=120,
    )


def test_config_check_refuses_rule_files_that_do_not_parse_as_serve_does(tmp_path: Path) -> None:
    """A rule file with two errors: `config check` exits 2 naming each with file:line
    (it said "ok" while `serve` refused the same config with exit 2)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: a\n    when: { nope: 1 }\n    actions: [{ discard: true }]\n"
        "  - name: b\n    actions: [{ redirectt: [x@example.com] }]\n",
        encoding="utf-8",
    )
    config = tmp_path / "gateway.toml"
    config.write_text(BASE + f"[rules]\nfiles = ['{rules}']\n", encoding="utf-8")
    check = cli("config", "check", "--config", str(config))
    serve = cli("serve", "--config", str(config))
    assert serve.returncode == 2
    assert check.returncode == 2, check.stdout
    assert "ok" not in check.stdout
    lines = [x for x in check.stderr.splitlines() if str(rules) in x]
    assert len(lines) == 2, check.stderr
    assert f"{rules}:3:" in lines[0] and f"{rules}:6:" in lines[1]
    assert "did you mean 'redirect'" in lines[1]


def test_config_check_refuses_an_unreadable_tls_key_and_users_file(tmp_path: Path) -> None:
    """TLS files and the AUTH users file are read by `config check` as by `serve`."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[smtp]\ntls_cert_file = '{tmp_path}/cert.pem'\ntls_key_file = '{tmp_path}/key.pem'\n"
        f"auth_users_file = '{tmp_path}/users'\n" + BASE,
        encoding="utf-8",
    )
    check = cli("config", "check", "--config", str(config))
    assert check.returncode == 2
    assert "cert.pem" in check.stderr and "users" in check.stderr
    assert "Traceback" not in check.stderr


def test_config_errors_list_every_problem_with_its_line_and_a_suggestion(tmp_path: Path) -> None:
    """Three unknown keys: three lines, each FILE:LINE:key with "did you mean", not one
    line and "(and 2 more)"."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[smtp]\nlisten = '127.0.0.1:2525'\ntls_cipher = 'x'\nmax_conections = 3\n"
        + BASE
        + "treshold = 0.3\n",
        encoding="utf-8",
    )
    check = cli("config", "check", "--config", str(config))
    assert check.returncode == 2
    assert "more)" not in check.stderr
    assert f"{config}:3:smtp.tls_cipher: unknown key (did you mean 'tls_ciphers'?)" in check.stderr
    assert f"{config}:4:smtp.max_conections: unknown key (did you mean 'max_connections'?)" in (
        check.stderr
    )
    assert f"{config}:9:classifier.treshold: unknown key (did you mean 'threshold'?)" in (
        check.stderr
    )


def _eml(subject: str, extra: str = "", sender: str | None = "alice@example.net") -> str:
    head = f"From: {sender}\n" if sender else ""
    return head + f"To: team@example.com\nSubject: {subject}\n{extra}\nPlease pay invoice 7.\n"


def test_explain_refuses_an_mbox_of_several_messages(tmp_path: Path) -> None:
    """An mbox of 3 messages is not explained (and classified, billed) as one message:
    exit 2, and the error says to use classify."""
    mbox = tmp_path / "inbox"
    mbox.write_text(
        "".join(f"From a@example.net Mon Dec  7 10:00:00 2026\n{_eml(f'm{i}')}\n" for i in range(3))
    )
    result = cli("explain", str(mbox))
    assert result.returncode == 2, result.stdout[-500:]
    assert "several messages" in result.stderr and "classify" in result.stderr
    assert result.stdout == ""


def test_classify_treats_a_policy_skip_as_no_failure_and_says_why_files_were_not_read(
    tmp_path: Path,
) -> None:
    """A folder with an invoice, an out-of-office (skipped by policy), a message without
    From: (classified: not a 'bounce') and a notes.txt: exit 0, the .txt is named as not
    read, and the summary says "1 request", not "1 requests"."""
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "a.eml").write_text(_eml("Invoice INV-7 overdue"))
    (folder / "b.eml").write_text(_eml("Out of office", "Auto-Submitted: auto-replied\n"))
    (folder / "c.eml").write_text(_eml("Invoice INV-8 overdue", sender=None))
    (folder / "notes.txt").write_text(_eml("not read"))
    result = cli("classify", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    status = {
        Path(r["source"]).name: r["status"] for r in map(json.loads, result.stdout.splitlines())
    }
    assert status["b.eml"] == "skipped; reason=auto-submitted"
    assert status["c.eml"] == "classified"
    assert status["a.eml"] == "classified"
    assert "1 file not read" in result.stderr and str(folder) in result.stderr
    assert "2 of 3 messages classified, 1 skipped by policy in 1 request," in result.stderr


def test_classify_of_a_missing_path_exits_2_and_help_says_what_is_read(tmp_path: Path) -> None:
    """A PATH that does not exist is a usage error (2) like the other commands', not a
    finding (1); `classify --help` says which files are read."""
    missing = cli("classify", str(tmp_path / "nope.eml"))
    assert missing.returncode == 2
    assert "nope.eml" in missing.stderr and "no such file" in missing.stderr
    helped = cli("classify", "--help")
    assert "*.eml" in helped.stdout and "Maildir" in helped.stdout


def test_scripts_serve_takes_a_relative_config_from_anywhere_and_its_maildir_is_beside_it(
    tmp_path: Path,
) -> None:
    """`../scripts/serve --config site/gateway.toml` from another directory: the config is
    found (it was looked up in the checkout), and its maildir://var/maildir means
    site/var/maildir, beside the config, as rule files do (it was the working directory)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "gateway.toml").write_text("[smtp]\nlisten = '127.0.0.1:0'\n" + BASE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "serve"), "--config", "../site/gateway.toml"],
        cwd=elsewhere,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        port = port_of(read_until(proc, "listening on"))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("alice@example.net", ["triage@example.com"], _eml("Invoice INV-7"))
    finally:
        code, stderr = stop_serve(proc)
    assert code == 0, stderr[-2000:]
    assert len(list((site / "var" / "maildir" / "new").iterdir())) == 1
    assert not (elsewhere / "var").exists()


def test_config_check_refuses_maildir_urls_that_do_not_mean_what_they_seem(
    tmp_path: Path,
) -> None:
    """maildir://~/Maildir would be a folder named '~'; '%20' would not be a space."""
    for url in ("maildir://~/Maildir", "maildir:///srv/my%20mail", "maildir:var/mail"):
        config = tmp_path / "gateway.toml"
        config.write_text(BASE.replace("maildir://var/maildir", url))
        check = cli("config", "check", "--config", str(config))
        assert check.returncode == 2, url
        assert f"{config}:2:downstream.url" in check.stderr, check.stderr


def test_emulate_refuses_a_port_out_of_range_and_every_option_has_help() -> None:
    """`emulate --port 99999` is a usage error (exit 2) before anything listens; every
    option and positional of every command says what it is in --help."""
    result = cli("emulate", "--port", "99999")
    assert result.returncode == 2
    assert "99999 is not between 0 and 65535" in result.stderr
    missing = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            elif not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "cm-gateway")
    assert missing == []


def test_a_retried_classifier_call_logs_one_line_with_url_and_error(tmp_path: Path) -> None:
    """An API that answers 503: each retry is one warning naming the URL and the error,
    without stamina's callable='<context block>' args=()."""

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[classifier]\nbase_url = '{base}'\nproject = 'p'\ndataset = 'd'\ntimeout = 3\n"
        "[log]\nformat = 'console'\n"
    )
    message = tmp_path / "m.eml"
    message.write_text(_eml("Invoice INV-7"))
    try:
        result = cli("classify", "--config", str(config), str(message), env={"REINFER_TOKEN": "t"})
    finally:
        server.shutdown()
    assert result.returncode == 1
    retries = [x for x in result.stderr.splitlines() if "retry_scheduled" in x]
    assert retries, result.stderr[-2000:]
    assert all(f"url={base}/api/v1/datasets/p/d/" in x for x in retries), retries
    assert all("server-error" in x for x in retries), retries
    assert "callable=" not in result.stderr and "<context block>" not in result.stderr


def test_a_transport_failure_is_one_retry_line_not_two(tmp_path: Path) -> None:
    """A closed port: each retry is one `retry_scheduled` warning naming the URL and the
    transport error; no second warning line per attempt."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[classifier]\nbase_url = 'http://127.0.0.1:{port}'\nproject = 'p'\ndataset = 'd'\n"
        "timeout = 2\n[log]\nformat = 'console'\n"
    )
    message = tmp_path / "m.eml"
    message.write_text(_eml("Invoice INV-7"))
    result = cli("classify", "--config", str(config), str(message), env={"REINFER_TOKEN": "t"})
    assert result.returncode == 1
    warnings = [x for x in result.stderr.splitlines() if "[warning" in x]
    assert warnings, result.stderr[-2000:]
    assert all("retry_scheduled" in x and f"127.0.0.1:{port}" in x for x in warnings), warnings


def test_explain_of_a_message_without_from_does_not_call_it_a_bounce(tmp_path: Path) -> None:
    """No From: header says nothing of the (absent) envelope: it is classified."""
    message = tmp_path / "m.eml"
    message.write_text(_eml("Invoice INV-8 overdue", sender=None))
    result = cli("explain", str(message), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["classification"]["status"] == "classified"
