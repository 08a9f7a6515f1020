"""``cm-gateway rules test`` through the command line: the shipped rule sets' expectation
files pass through the public command (a real process), a failing expectation prints its
difference and exits 1, a bad file exits 2 at its line and column, ``--json``, ``rules
check`` on a test file, and ``explain --at/--thread-matched``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TESTS = sorted((ROOT / "rules" / "tests").glob("*.yaml"))


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`rules test` and `explain` configure logging for the process: undo it after each
    test (later tests in this process read their own log lines)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_shipped_rule_sets_pass_their_expectation_files() -> None:
    """`cm-gateway rules test rules/tests/*.yaml`: every test ok, exit 0."""
    assert len(SHIPPED_TESTS) == 3
    done = cli("rules", "test", *(str(p.relative_to(ROOT)) for p in SHIPPED_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].endswith(" passed, 0 failed")
    assert all(line.startswith("ok    rules/tests/") for line in lines[:-1])
    assert len(lines) - 1 >= 15


RULES = """\
lists:
  vip: vip.txt
rules:
  - name: night
    when: { time: { between: "22:00-06:00", tz: Europe/Paris } }
    actions: [{ reject: "closed at night" }]
  - name: vip
    when: { any: [{ from: { list: vip } }, { thread: { matched: vip } }] }
    actions: [{ add_header: { X-Queue: vip } }, { remove_header: X-Spam-Flag }]
    stop: true
"""


def _project(tmp_path: Path, tests: str) -> Path:
    (tmp_path / "vip.txt").write_text("boss@example.com\n")
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "m.eml").write_text(
        "From: boss@example.com\nTo: team@example.com\nX-Spam-Flag: YES\n\nhello\n"
    )
    path = tmp_path / "t.yaml"
    path.write_text("rules: [rules.yaml]\ntests:\n" + tests)
    return path


PASSING = """\
  - name: the boss keeps the vip queue and loses the spam flag
    message: m.eml
    at: "2026-12-07T10:00:00+01:00"
    expect:
      { verdict: deliver, rules: [vip], headers: { X-Queue: vip }, removed_headers: [X-Spam-Flag] }
  - name: a reply from anyone follows the vip thread
    message: { from: joe@example.org, to: team@example.com, body: thanks }
    thread: { matched: [vip] }
    at: "2026-12-07T12:00:00+00:00"
    expect: { rules: [vip], recipients: [team@example.com] }
  - name: at night in Paris mail is rejected
    message: { from: joe@example.org, to: team@example.com, body: hi }
    at: "2026-12-07T22:30:00+00:00"
    expect: { verdict: reject, rules: [night], reply: "550 5.7.1 closed..." }
"""


def test_passing_tests_print_one_ok_line_each_and_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each condition and action of the new language, proved through `rules test`."""
    path = _project(tmp_path, PASSING)
    code = main(["rules", "test", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines() == [
        f"ok    {path}:3: the boss keeps the vip queue and loses the spam flag",
        f"ok    {path}:8: a reply from anyone follows the vip thread",
        f"ok    {path}:13: at night in Paris mail is rejected",
        "3 tests in 1 file: 3 passed, 0 failed",
    ]


FAILING = """\
  - name: wrong on purpose
    message: m.eml
    at: "2026-12-07T23:30:00+00:00"
    expect:
      verdict: deliver
      rules: [night]
      recipients: [other@example.com]
      headers: { X-Queue: general }
      removed_headers: []
      reply: "451 4.7.1 later"
"""


def test_a_failing_test_prints_what_differed_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every expectation that differs is one indented line under FAIL."""
    path = _project(tmp_path, FAILING)
    code = main(["rules", "test", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines() == [
        f"FAIL  {path}:3: wrong on purpose",
        "        verdict: expected deliver, got reject",
        "        rules: expected ['night'], got ['night', 'vip']",
        "        recipients: expected ['other@example.com'], got ['team@example.com']",
        "        header X-Queue: expected 'general', got 'vip'",
        "        removed_headers: expected [], got ['x-spam-flag']",
        "        reply: expected '451 4.7.1 later', got '550 5.7.1 closed at night'",
        "1 test in 1 file: 0 passed, 1 failed",
    ]


def test_json_output_holds_every_test_and_its_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: counts, and per test its position, differences and decision."""
    path = _project(tmp_path, PASSING + FAILING)
    code = main(["rules", "test", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (report["passed"], report["failed"], report["errors"]) == (3, 1, [])
    last = report["tests"][-1]
    assert (last["line"], last["passed"], last["decision"]["verdict"]) == (17, False, "reject")


@pytest.mark.parametrize(
    ("tests", "where", "fragment"),
    [
        (
            "  - name: x\n    message: nope.eml\n    expect: { verdict: deliver }\n",
            "4:14",
            "test 'x': cannot read message",
        ),
        (
            "  - name: x\n    message: m.eml\n    expct: {}\n",
            "3:5",
            "missing required key 'expect'",
        ),
        (
            "  - name: x\n    message: m.eml\n    at: '2026-12-07 10:00'\n"
            "    expect: {rules: []}\n",
            "5:9",
            "'at' needs a UTC offset",
        ),
        (
            "  - name: x\n    message: m.eml\n    thread: {matched: [vipp]}\n"
            "    expect: {rules: []}\n",
            "5:24",
            "no rule named 'vipp'",
        ),
        (
            "  - name: x\n    message: m.eml\n    predictions: {labels: 3}\n"
            "    expect: {rules: []}\n",
            "5:18",
            "test 'x':",
        ),
        (
            "  - name: x\n    message: m.eml\n    expect: {verdict: maybe}\n",
            "5:23",
            "unknown verdict 'maybe'",
        ),
    ],
)
def test_a_bad_test_file_exits_2_with_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tests: str, where: str, fragment: str
) -> None:
    """Errors on stderr as FILE:LINE:COL: message, and exit 2."""
    path = _project(tmp_path, tests)
    code = main(["rules", "test", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}:{where}: " in err, err
    assert fragment in err, err


def test_rules_check_validates_a_test_file_with_its_rules_and_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rules check` knows the test-file format: ok with the test count, or its errors."""
    path = _project(tmp_path, PASSING)
    assert main(["rules", "check", str(path), str(tmp_path / "rules.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ok (3 tests)" in out and "rules.yaml: ok (2 rules)" in out
    bad = _project(tmp_path, "  - name: x\n    message: nope.eml\n    expect: {rules: []}\n")
    assert main(["rules", "check", str(bad)]) == 2
    assert f"{bad}:4:14: test 'x': cannot read message" in capsys.readouterr().err


def test_explain_shows_the_time_and_conversation_the_rules_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """explain --at / --thread-matched: the time window and the thread rule, and the
    removed header, in the report."""
    _project(tmp_path, PASSING)
    pred = tmp_path / "p.json"
    pred.write_text('{"labels": []}')
    args = ["explain", str(tmp_path / "m.eml"), "--rules", str(tmp_path / "rules.yaml")]
    code = main([*args, "--predictions", str(pred), "--at", "2026-12-07T22:30:00Z", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["rules"]["at"] == "2026-12-07T22:30:00+00:00"
    assert report["decision"]["rules_hit"] == ["night", "vip"]
    assert report["decision"]["removed_headers"] == ["X-Spam-Flag"]
    other = tmp_path / "o.eml"
    other.write_text("From: joe@example.org\nTo: team@example.com\n\nthanks\n")
    args = ["explain", str(other), "--rules", str(tmp_path / "rules.yaml")]
    code = main(
        [
            *args,
            "--predictions",
            str(pred),
            "--at",
            "2026-12-07T21:30:00Z",
            "--thread-matched",
            "vip",
        ]
    )
    out = capsys.readouterr().out
    assert "this thread earlier matched: vip" in out
    assert "why: an earlier message of this thread matched vip" in out
    assert "why: time mon 2026-12-07 22:30 Europe/Paris inside" in out
