"""``cm-gateway rules check`` through the command line: a real ``python -m gateway``
process for the main paths, ``gateway.cli._main.main`` in-process (same parser, same exit
codes, no interpreter start-up) for the rest."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.cli import main
from gateway.cli._rules import unknown_labels
from gateway.emulator import KeywordModel
from gateway.predictions import join_label
from gateway.rules import load_rules, parse_rules
from gateway.testing import running_emulator

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("inline-routing", "shared-inbox-triage", "compliance-tagging")
TOKEN_ENV = "CM_TEST_RULES_TOKEN"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``--against-model`` configures logging for the process: undo it after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_rules_check_accepts_every_shipped_rule_set() -> None:
    """Each shipped file prints 'FILE: ok (N rules)', nothing on stderr, exit 0."""
    files = [f"rules/{name}.yaml" for name in SHIPPED]
    result = cli("rules", "check", *files)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for file in files:
        count = len(load_rules([ROOT / file]))
        assert f"{file}: ok ({count} rules)" in result.stdout.splitlines()


def test_rules_check_without_files_checks_the_configured_rules_against_the_emulator(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """No FILE: the embedded default's rule set, and its labels all exist in the model."""
    monkeypatch.chdir(ROOT)
    code, out, err = run_main(capsys, "rules", "check", "--against-model")
    assert code == 0, err
    assert re.search(r"shared-inbox-triage\.yaml: ok \(\d+ rules\)", out)
    assert "emulator" in out
    assert re.search(r"all \d+ labels named by the rules are known", out)


BROKEN = {
    # file name: (content, expected "line:col: " and the gist of the message)
    "syntax.yaml": ('rules:\n  - name: a\n    when: { label: "A"\n    actions: []\n', "4:5", "'}'"),
    "unknown-key.yaml": (
        'rules:\n  - name: a\n    when:\n      label: "Finance > Invoice"\n'
        "      min_probabilty: 0.7\n",
        "5:7",
        "did you mean 'min_probability'",
    ),
    "bad-type.yaml": (
        'rules:\n  - name: a\n    when:\n      label: "Finance"\n      min_probability: high\n',
        "5:24",
        "must be a number",
    ),
    "bad-regex.yaml": (
        'rules:\n  - name: a\n    when:\n      header: { name: Subject, matches: "([" }\n',
        "4:41",
        "bad regex",
    ),
    "bad-address.yaml": (
        "rules:\n  - name: a\n    actions:\n      - redirect: [not-an-address]\n",
        "4:20",
        "not an address",
    ),
    "reserved-header.yaml": (
        "rules:\n  - name: a\n    actions:\n      - add_header: { Subject: hi }\n",
        "4:23",
        "use prefix_subject",
    ),
    "bad-label.yaml": (
        'rules:\n  - name: a\n    when:\n      label: "Finance > *Inv"\n',
        "4:14",
        "'*' may only stand alone",
    ),
    "no-rules.yaml": ("description: nothing here\n", "1:1", "missing required key 'rules'"),
}


def test_rules_check_reports_each_error_kind_at_file_line_column_and_exits_2(
    tmp_path: Path,
) -> None:
    """Every kind of broken file is reported as FILE:LINE:COL: message; exit status 2."""
    paths = [_write(tmp_path / name, content) for name, (content, _, _) in BROKEN.items()]
    result = cli("rules", "check", *map(str, paths))
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    for name, (_, where, gist) in BROKEN.items():
        prefix = f"{tmp_path / name}:{where}: "
        lines = [line for line in errors if line.startswith(prefix)]
        assert lines, f"no error starting {prefix!r} in {errors}"
        assert gist in lines[0]
    assert "ok" not in result.stdout


def test_rules_check_refuses_a_rule_name_used_in_two_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files are one sequence: a duplicate name is an error at the second one, exit 2."""
    text = "rules:\n  - name: same\n    actions:\n      - bcc: [a@example.com]\n"
    first = _write(tmp_path / "one.yaml", text)
    second = _write(tmp_path / "two.yaml", text)
    code, _, err = run_main(capsys, "rules", "check", str(first), str(second))
    assert code == 2
    assert f"{second}:2:11: rule 'same': duplicate rule name" in err


def test_rules_check_prints_warnings_for_dead_rules_and_still_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rule shadowed by an earlier unconditional stop, and a disabled rule, are warnings."""
    path = _write(
        tmp_path / "dead.yaml",
        "rules:\n"
        "  - name: everything\n"
        "    actions:\n"
        "      - add_header: { X-Seen: 'yes' }\n"
        "    stop: true\n"
        "  - name: never-reached\n"
        '    when: { label: "Urgent" }\n'
        "    actions:\n"
        "      - add_header: { X-Urgent: 'yes' }\n"
        "  - name: switched-off\n"
        "    enabled: false\n",
    )
    code, out, err = run_main(capsys, "rules", "check", str(path))
    assert code == 0, err
    assert f"{path}: ok (3 rules)" in out
    assert re.search(
        rf"^{re.escape(str(path))}:6: warning: rule 'never-reached': .*shadowed.*'everything'",
        err,
        re.MULTILINE,
    )
    assert f"{path}:10: warning: rule 'switched-off': disabled" in err


def _tenant_config(tmp_path: Path, base_url: str, timeout: float = 10.0) -> Path:
    return _write(
        tmp_path / "gateway.toml",
        "[classifier]\n"
        'provider = "communications-mining"\n'
        f'base_url = "{base_url}"\n'
        'project = "acme"\n'
        'dataset = "inbox"\n'
        f'token_env = "{TOKEN_ENV}"\n'
        f"timeout = {timeout}\n",
    )


def test_against_model_over_http_flags_a_misspelt_label_with_the_closest_name(
    tmp_path: Path,
) -> None:
    """The taxonomy comes from the validation route; a typo is named with a suggestion."""
    rules = _write(
        tmp_path / "typo.yaml",
        "rules:\n"
        "  - name: invoices\n"
        '    when: { label: "Finance > Invoce", min_probability: 0.7 }\n'
        "    actions:\n"
        "      - redirect: [ap@example.com]\n"
        "  - name: it\n"
        '    when: { label: "IT > *" }\n'
        "    actions:\n"
        "      - redirect: [helpdesk@example.com]\n",
    )
    with running_emulator(token="s3cret-token") as emu:
        config = _tenant_config(tmp_path, emu.base_url)
        result = cli(
            "rules",
            "check",
            "--config",
            str(config),
            "--against-model",
            str(rules),
            env={TOKEN_ENV: "s3cret-token"},
        )
        stats = emu.stats()
    assert result.returncode == 1, result.stderr
    assert (
        f"{rules}:2: rule 'invoices': unknown label \"Finance > Invoce\""
        ' (did you mean "Finance > Invoice"?)'
    ) in result.stderr
    assert "IT" not in result.stderr  # "IT > *" is known by its parent
    assert "classifier.response" not in result.stdout  # logs stay off the report
    assert "1 of 2 labels" in result.stdout
    assert stats["requests_by_route"] == {"validation": 1}
    assert "s3cret-token" not in result.stdout + result.stderr


def test_against_model_that_cannot_be_reached_exits_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,
) -> None:
    """A model that does not answer is a finding (exit 1) with the reason, not a crash."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _tenant_config(tmp_path, f"http://127.0.0.1:{port}", timeout=1.0)
    monkeypatch.setenv(TOKEN_ENV, "t")
    rules = str(ROOT / "rules" / "inline-routing.yaml")
    code, _, err = run_main(capsys, "rules", "check", "-c", str(config), "--against-model", rules)
    assert code == 1
    assert "cannot read the model's taxonomy" in err


EMULATOR_TAXONOMY = [join_label(parts) for parts in KeywordModel.default().label_names]


@pytest.mark.parametrize(
    ("label", "suggestion"),
    [
        ("Finance > Invoce", "Finance > Invoice"),
        ("finance > invoice", "Finance > Invoice"),
        ("Complaint", "Customer Service > Complaint"),
        ("Legl > *", "Legal > *"),
        ("Notification > Out Of Office", "Notification > Out of Office"),
    ],
)
def test_unknown_label_gets_the_closest_taxonomy_name(label: str, suggestion: str) -> None:
    """Typos, case slips, short child names and wildcard parents get a useful suggestion."""
    ruleset = parse_rules(f'rules:\n  - name: r\n    when: {{ label: "{label}" }}\n')
    [unknown] = unknown_labels(ruleset, EMULATOR_TAXONOMY)
    assert (unknown.label, unknown.suggestion, unknown.line) == (label, suggestion, 2)


def test_known_labels_wildcards_and_bare_star_are_not_flagged() -> None:
    """Exact names, 'Parent > *' with a known parent, and '*' pass the model check."""
    ruleset = parse_rules(
        "rules:\n  - name: r\n    when:\n      any:\n"
        '        - label: "Finance > Invoice"\n'
        '        - label: "Customer Service > *"\n'
        '        - not: { label: "*" }\n'
        '        - label: "Urgent"\n'
    )
    assert unknown_labels(ruleset, EMULATOR_TAXONOMY) == []
