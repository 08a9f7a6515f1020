"""The CLI in an administrator's first hour (issue 19): ``config check`` checks what
``serve`` would, relative paths mean the config's folder, and the rough edges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .serve_support import ROOT

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
