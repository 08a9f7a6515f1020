"""``cm-gateway rules test FILE... [--config FILE] [--json]``: run rule test files.

Each test is run through ``explain``'s own evaluation (``explain_message``: the same
parse, context, headers and decision as ``serve``), with the test's predictions, time
and conversation, and its expectations compared with what came out. Output: one line
per test (``ok`` or ``FAIL``, file:line and name), what differed under a failure, then
a summary; ``--json`` prints one object instead.

Exit status: 0 every test passed; 1 some failed; 2 a test file (or a rule, message or
predictions file it names) is bad: errors as ``FILE:LINE:COL: message`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from gateway.config import Config, load_config
from gateway.context import ClassificationStatus
from gateway.errors import ConfigError, RuleFileError
from gateway.logsetup import configure_logging
from gateway.pipeline import GivenPredictions, load_predictions_file, parse_predictions
from gateway.rules import (
    RuleSet,
    RuleTestFileModel,
    RuleTestModel,
    load_rules,
    load_test_file,
    located_error,
)
from gateway.rules import YamlDoc as _Doc

from ._explain import explain_message

__all__ = ["TestResult", "check_test_file", "run", "run_test_file"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
NO_PREDICTIONS = GivenPredictions(
    None, ClassificationStatus("unclassified", "no-predictions"), None
)


@dataclass(slots=True)
class TestResult:
    """One test's outcome; ``differences`` is empty when it passed."""

    file: str
    line: int
    name: str
    differences: list[str] = field(default_factory=list)
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.differences


@dataclass(slots=True)
class _Prepared:
    name: str
    line: int
    raw: bytes
    display: str
    given: GivenPredictions
    test: RuleTestModel


def _inline(test: RuleTestModel) -> bytes:
    message = test.message
    assert not isinstance(message, str)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = message.from_
    msg["To"] = ", ".join(message.to)
    if message.subject:
        msg["Subject"] = message.subject
    for name, value in (message.headers or {}).items():
        msg[name] = value
    msg.set_content(message.body or "")
    return msg.as_bytes()


def _prepare(
    path: Path, doc: _Doc, index: int, test: RuleTestModel
) -> tuple[_Prepared | None, list[RuleFileError]]:
    file = str(path)
    base = path.parent
    line = doc.positions[("tests", index)].line
    where = ("tests", index)
    try:
        if isinstance(test.message, str):
            display = str(base / test.message)
            try:
                raw = (base / test.message).read_bytes()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                message = f"cannot read message {display}: {reason}"
                return None, [located_error(doc, file, (*where, "message"), message)]
        else:
            display = f"{file}:{line} (inline)"
            raw = _inline(test)
    except (ValueError, TypeError) as exc:
        return None, [located_error(doc, file, (*where, "message"), f"bad inline message: {exc}")]
    given = NO_PREDICTIONS
    if isinstance(test.predictions, str):
        try:
            given = load_predictions_file(base / test.predictions)
        except ConfigError as exc:
            return None, [located_error(doc, file, (*where, "predictions"), str(exc))]
    elif test.predictions is not None:
        try:
            given = parse_predictions(test.predictions)
        except ValueError as exc:
            return None, [located_error(doc, file, (*where, "predictions"), str(exc))]
    return _Prepared(test.name, line, raw, display, given, test), []


def _same_addresses(a: list[str], b: list[str]) -> bool:
    return [x.lower() for x in a] == [x.lower() for x in b]


def _differences(test: RuleTestModel, decision: dict[str, Any]) -> list[str]:
    want = test.expect
    out: list[str] = []
    if want.verdict is not None and want.verdict != decision["verdict"]:
        out.append(f"verdict: expected {want.verdict}, got {decision['verdict']}")
    if want.rules is not None and want.rules != decision["rules_hit"]:
        out.append(f"rules: expected {want.rules}, got {decision['rules_hit']}")
    if want.recipients is not None and not _same_addresses(want.recipients, decision["recipients"]):
        out.append(f"recipients: expected {want.recipients}, got {decision['recipients']}")
    for name, value in (want.headers or {}).items():
        got = [v for n, v in decision["headers"] if n.lower() == name.lower()]
        if value not in got:
            seen = ", ".join(repr(v) for v in got) if got else "not added"
            out.append(f"header {name}: expected {value!r}, got {seen}")
    if want.removed_headers is not None:
        expected = sorted(n.lower() for n in want.removed_headers)
        removed = sorted(n.lower() for n in decision["removed_headers"])
        if expected != removed:
            out.append(f"removed_headers: expected {want.removed_headers}, got {removed}")
    if want.reply is not None:
        reply = decision["reply"]
        prefix = want.reply[:-3] if want.reply.endswith("...") else None
        ok = reply is not None and (reply.startswith(prefix) if prefix else reply == want.reply)
        if not ok:
            out.append(f"reply: expected {want.reply!r}, got {reply!r}")
    return out


def _load(
    path: Path,
) -> tuple[RuleTestFileModel | None, _Doc | None, RuleSet | None, list[RuleFileError]]:
    model, doc, errors = load_test_file(path)
    if model is None or doc is None:
        return None, doc, None, errors
    rule_paths = [path.parent / r for r in model.rules]
    try:
        ruleset = load_rules(rule_paths)
    except ConfigError as exc:
        return model, doc, None, [RuleFileError(exc.message, file=exc.file, where=exc.where)]
    for index, test in enumerate(model.tests):
        if test.thread is None:
            continue
        names = {r.name for r in ruleset.rules}
        for j, rule in enumerate(test.thread.matched):
            if rule not in names:
                ref = ("tests", index, "thread", "matched", j)
                errors.append(
                    located_error(doc, str(path), ref, f"no rule named {rule!r} in {model.rules}")
                )
    return model, doc, ruleset, errors


def check_test_file(path: Path) -> tuple[int, list[RuleFileError]]:
    """(number of tests, every error): what ``rules check`` says of a test file."""
    model, doc, ruleset, errors = _load(path)
    if model is None or doc is None or ruleset is None or errors:
        return 0, errors
    for index, test in enumerate(model.tests):
        errors.extend(_prepare(path, doc, index, test)[1])
    return len(model.tests), errors


def run_test_file(config: Config, path: Path) -> tuple[list[TestResult], list[RuleFileError]]:
    """Run one test file: the results, or the errors that stopped it."""
    model, doc, ruleset, errors = _load(path)
    if model is None or doc is None or ruleset is None or errors:
        return [], errors
    prepared: list[_Prepared] = []
    for index, test in enumerate(model.tests):
        item, problems = _prepare(path, doc, index, test)
        errors.extend(problems)
        if item is not None:
            prepared.append(item)
    if errors:
        return [], errors
    results = []
    for item in prepared:
        test = item.test
        envelope = test.envelope
        report = explain_message(
            config,
            item.display,
            item.raw,
            ruleset,
            given=item.given,
            envelope=(
                (envelope.from_ if envelope else None),
                (tuple(envelope.to) if envelope and envelope.to else None),
            ),
            at=test.at,
            thread_matched=frozenset(test.thread.matched if test.thread else ()),
        )
        decision = report["decision"]
        results.append(
            TestResult(str(path), item.line, item.name, _differences(test, decision), decision)
        )
    return results, []


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    """``cm-gateway rules test``: see the module docstring."""
    config = load_config(args.config)
    configure_logging("warning", config.log.format)
    results: list[TestResult] = []
    errors: list[RuleFileError] = []
    for name in args.files:
        found, problems = run_test_file(config, Path(name))
        results.extend(found)
        errors.extend(problems)
    failed = [r for r in results if not r.passed]
    for error in errors:
        print(str(error), file=sys.stderr)
    if args.json:
        report = {
            "files": list(args.files),
            "passed": len(results) - len(failed),
            "failed": len(failed),
            "errors": [str(e) for e in errors],
            "tests": [
                {
                    "file": r.file,
                    "line": r.line,
                    "name": r.name,
                    "passed": r.passed,
                    "differences": r.differences,
                    "decision": r.decision,
                }
                for r in results
            ],
        }
        json.dump(report, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(f"{'ok  ' if r.passed else 'FAIL'}  {r.file}:{r.line}: {r.name}")
            for difference in r.differences:
                print(f"        {difference}")
        bad = f", {_count(len(errors), 'error')}" if errors else ""
        print(
            f"{_count(len(results), 'test')} in {_count(len(args.files), 'file')}:"
            f" {len(results) - len(failed)} passed, {len(failed)} failed{bad}"
        )
    if errors:
        return EXIT_INVALID
    return EXIT_FAILED if failed else EXIT_OK
