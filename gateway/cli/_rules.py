"""``cm-gateway rules check [FILE...] [--config FILE] [--against-model]``.

Output (rules/README.md): ``FILE: ok (N rules)`` on stdout per valid file; every error
as ``FILE:LINE:COL: message`` and every warning as ``FILE:LINE: warning: ...`` on
stderr. With ``--against-model``, labels the model does not know are reported as
``FILE:LINE: rule 'x': unknown label "A > B" (did you mean "A > C"?)`` on stderr.

A rule test file (a YAML document with ``tests``; ``rules test``) is checked as one:
its format, the rule files it names, its messages and predictions (``FILE: ok (N
tests)``).

Exit status: 2 when a file does not validate (what the gateway would refuse to load),
else 1 when ``--against-model`` found unknown labels or could not read the taxonomy,
else 0 — warnings alone do not change it.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.config import Config, load_config
from gateway.errors import ClassifierError, RuleFileError
from gateway.logsetup import configure_logging
from gateway.predictions import join_label, split_label
from gateway.rules import (
    RuleSet,
    RuleWarning,
    check_rule_files,
    is_test_document,
    load_rules,
)

__all__ = ["UnknownLabel", "model_taxonomy", "run_check", "unknown_labels"]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INVALID = 2


@dataclass(frozen=True, slots=True)
class UnknownLabel:
    """A label a rule names that the model's taxonomy does not hold."""

    file: str
    line: int
    rule: str
    label: str
    suggestion: str | None

    def __str__(self) -> str:
        hint = f' (did you mean "{self.suggestion}"?)' if self.suggestion else ""
        return f"{self.file}:{self.line}: rule '{self.rule}': unknown label \"{self.label}\"{hint}"


def _labels_in(condition: Any) -> Iterable[str]:
    """Every ``label`` value of a dumped condition, nested ones included, in order."""
    if isinstance(condition, dict):
        label = condition.get("label")
        if isinstance(label, str):
            yield label
        for key in ("all", "any"):
            for child in condition.get(key) or ():
                yield from _labels_in(child)
        yield from _labels_in(condition.get("not"))


def _suggest(name: str, known: Sequence[str]) -> str | None:
    exact_case = [k for k in known if k.casefold() == name.casefold()]
    if exact_case:
        return exact_case[0]
    # A short name ("Complaint") for a child label ("Customer Service > Complaint").
    tail = [k for k in known if split_label(k)[-1:] == split_label(name)[-1:]]
    if len(tail) == 1:
        return tail[0]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    lowered = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(name.casefold(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def unknown_labels(ruleset: RuleSet, taxonomy: Iterable[str]) -> list[UnknownLabel]:
    """Labels named by the rules and absent from ``taxonomy`` (``A > B`` names).

    ``"Parent > *"`` is checked by its parent; a bare ``"*"`` always passes."""
    known: set[str] = set()
    for name in taxonomy:
        parts = split_label(name)
        # A parent is a label of its own even if the taxonomy lists only its children.
        known.update(join_label(parts[:i]) for i in range(1, len(parts) + 1))
    ordered = sorted(known)
    found: list[UnknownLabel] = []
    for rule in ruleset.rules:
        when = rule.model.when
        if when is None:
            continue
        seen: set[str] = set()
        for label in _labels_in(when.model_dump(by_alias=True, exclude_none=True)):
            parts = split_label(label)
            wildcard = bool(parts) and parts[-1] == "*"
            if wildcard:
                parts = parts[:-1]
            if not parts:
                continue
            name = join_label(parts)
            if name in known or label in seen:
                continue
            seen.add(label)
            suggestion = _suggest(name, ordered)
            if suggestion and wildcard:
                suggestion = join_label((*split_label(suggestion), "*"))
            shown = join_label(split_label(label))
            found.append(UnknownLabel(rule.file, rule.line, rule.name, shown, suggestion))
    return found


async def _taxonomy(config: Config) -> tuple[str, list[str]]:
    from gateway.classify import CommunicationsMiningClient, make_classifier

    classifier = make_classifier(config)
    try:
        if config.classifier.provider == "emulator":
            from gateway.emulator import EmulatorClassifier

            assert isinstance(classifier, EmulatorClassifier)
            names = [join_label(parts) for parts in classifier.model.label_names]
        elif isinstance(classifier, CommunicationsMiningClient):
            names = list((await classifier.validation()).label_names)
        else:  # pragma: no cover - every provider is one of the two above
            raise ClassifierError(f"{classifier.description} has no taxonomy route")
        return classifier.description, sorted(names)
    finally:
        await classifier.aclose()


def model_taxonomy(config: Config) -> tuple[str, list[str]]:
    """(classifier description, every label name of the configured model).

    For ``provider = "emulator"`` the in-process model's taxonomy; otherwise the
    ``validation`` route. Raises ``ClassifierError`` when the model cannot be asked."""
    return asyncio.run(_taxonomy(config))


def _print_err(text: str) -> None:
    print(text, file=sys.stderr)


def _warning_text(warning: RuleWarning) -> str:
    return f"{warning.file}:{warning.line}: warning: rule '{warning.rule}': {warning.text}"


def _check_one(path: Path, routes: Sequence[str]) -> tuple[RuleSet | None, list[RuleFileError]]:
    # routes: a `route` action must name a [downstream.routes] table of --config.
    try:
        return load_rules([path], routes=routes), []
    except RuleFileError:
        return None, check_rule_files([path], routes=routes) or []


def _is_test_file(path: Path) -> bool:
    try:
        return is_test_document(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # reported as the rule file it then is


def run_check(args: argparse.Namespace) -> int:
    """Validate rule files; see the module docstring for the output and exit status."""
    config = load_config(args.config)
    paths = [Path(f) for f in args.files] if args.files else config.rule_paths()
    if not paths:
        _print_err("cm-gateway: no rule files to check (rules.files is empty)")
        return EXIT_INVALID

    loaded: list[RuleSet] = []
    invalid = False
    tests = [p for p in paths if _is_test_file(p)]
    paths = [p for p in paths if p not in tests]
    for path in tests:  # a rule test file: its format, its rule files and messages
        from ._rule_tests import check_test_file

        count, errors = check_test_file(path)
        invalid = invalid or bool(errors)
        for error in errors:
            _print_err(str(error))
        if not errors:
            print(f"{path}: ok ({count} test{'' if count == 1 else 's'})")
    for path in paths:
        ruleset, errors = _check_one(path, list(config.downstream.routes))
        if ruleset is None:
            invalid = True
            for error in errors:
                _print_err(str(error))
            continue
        loaded.append(ruleset)
        plural = "" if len(ruleset) == 1 else "s"
        print(f"{path}: ok ({len(ruleset)} rule{plural})")

    combined: RuleSet | None = None
    if not invalid and len(paths) > 1:
        # The files are evaluated as one sequence: names must be unique across them, and
        # a stop in one file can shadow a rule in the next.
        try:
            combined = load_rules(paths, routes=list(config.downstream.routes))
        except RuleFileError:
            invalid = True
            for error in check_rule_files(paths, routes=list(config.downstream.routes)):
                _print_err(str(error))
    elif not invalid and loaded:
        combined = loaded[0]

    for ruleset in [combined] if combined is not None else loaded:
        for warning in ruleset.warnings():
            _print_err(_warning_text(warning))

    if invalid:
        return EXIT_INVALID
    if not args.against_model or combined is None:
        return EXIT_OK

    assert combined is not None
    # Client logs go to stderr, and only warnings: stdout is the report.
    configure_logging("warning", config.log.format)
    try:
        description, taxonomy = model_taxonomy(config)
    except ClassifierError as exc:
        _print_err(f"cm-gateway: cannot read the model's taxonomy: {exc}")
        return EXIT_FINDINGS
    unknown = unknown_labels(combined, taxonomy)
    for item in unknown:
        _print_err(str(item))
    referenced = combined.labels_referenced()
    if unknown:
        print(
            f"model: {description}: {len(unknown)} of {len(referenced)} labels named by"
            f" the rules are unknown to it ({len(taxonomy)} labels in its taxonomy)"
        )
        return EXIT_FINDINGS
    print(
        f"model: {description}: all {len(referenced)} labels named by the rules are known"
        f" ({len(taxonomy)} labels in its taxonomy)"
    )
    return EXIT_OK
