"""Fuzzing the rule loader (issue 6, item 4): whatever text a rule file holds,
``load_rules`` returns a ``RuleSet`` or raises ``RuleFileError`` naming the file and a
``line:column`` inside it. Never any other exception (a RecursionError at start-up or on
SIGHUP would take the gateway down or leave it without an answer).

Inputs: arbitrary YAML-ish text built from YAML's own tokens, the shipped rule sets
mutated (lines dropped, duplicated, swapped, re-indented, characters and tokens spliced
in), deep nesting, and raw bytes (not UTF-8). ``tests/unit/test_rules_property.py``
covers *valid* random rule sets; this file covers the invalid ones.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from gateway.errors import RuleFileError
from gateway.rules import RuleSet, load_rules

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "rules").glob("*.yaml"))
SOAK = bool(os.environ.get("CMGW_SOAK"))
_WHERE = re.compile(r"^([0-9]+):([0-9]+)$")
# The line breaks of YAML 1.1 (and of PyYAML's marks): NEL, LS and PS included.
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # a shared, slow machine: wall-clock deadlines would be flaky
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


FAST = _settings(2000 if SOAK else 150)
LONG = _settings(20_000)

TOKENS = [
    "rules:", "- ", "  ", "\n", ": ", "name: ", "when: ", "actions: ", "label: ", "stop: true",
    "{", "}", "[", "]", ", ", "'", '"', "&a ", "*a", "<<: *a", "!!python/object:os.system ",
    "!!binary ", "!!str ", "? ", "|\n", ">-\n", "---\n", "...\n", "%YAML 1.1\n", "# c\n", "\t",
    "\x00", "\ufeff", "\x85", "\u2028", "\r", "\r\n", "null", "~", "yes", "1e999", ".nan",
    "0x1F", "2001-12-14", "\\", "\\u0000", "not:", "any:", "all:", "add_header: ",
    "X-A: {labels}", "reject: ", "prefix_subject: ", "matches: '('", "size: {above: 10MB}",
]  # fmt: skip

yamlish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), max_size=60).map(
    "".join
)


def check_load(path: Path, text: str) -> RuleSet | RuleFileError:
    """Load ``path`` (holding ``text``); assert the only outcomes the contract allows."""
    try:
        return load_rules([path])
    except RuleFileError as exc:
        assert exc.file == str(path), f"error names {exc.file!r}, not the file"
        assert exc.where is not None, f"no line:column in {exc}"
        match = _WHERE.match(exc.where)
        assert match is not None, f"where is not line:column: {exc.where!r}"
        line, column = int(match.group(1)), int(match.group(2))
        lines = _BREAK.split(text)
        # A parser may point just past the last line (end of stream) or the last column.
        assert 1 <= line <= len(lines) + 1, f"line {line} outside a {len(lines)}-line file"
        longest = max(len(x) for x in lines)
        assert 1 <= column <= longest + 2, f"column {column} outside the file: {exc}"
        assert exc.message and "\n" not in str(exc).strip(), f"not one line: {str(exc)!r}"
        return exc


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _deep(kind: str, depth: int) -> str:
    if kind == "flow-list":
        return "rules: " + "[" * depth + "]" * depth + "\n"
    if kind == "flow-map":
        return "rules: " + "{a: " * depth + "b" + "}" * depth + "\n"
    if kind == "not":
        when = "{not: " * depth + "{label: Urgent}" + "}" * depth
        return f"rules:\n  - name: deep\n    when: {when}\n    actions: []\n"
    # block style: every level one more indentation step
    lines = ["rules:", "  - name: deep", "    when:"]
    lines += ["      " + "  " * i + "not:" for i in range(depth)]
    lines += ["      " + "  " * depth + "label: Urgent", "    actions: []"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind", ["flow-list", "flow-map", "not", "block"])
@pytest.mark.parametrize("depth", [50, 400, 3000])
def test_deeply_nested_rule_files_load_or_fail_with_file_and_position(
    tmp_path: Path, kind: str, depth: int
) -> None:
    """Nesting 50, 400 and 3,000 deep: a RuleSet or a RuleFileError, never RecursionError."""
    text = _deep(kind, depth)
    outcome = check_load(_write(tmp_path, text), text)
    if depth >= 400:
        assert isinstance(outcome, RuleFileError), f"{kind} x{depth} loaded"


@FAST
@example("rules:\x00")
@example("rules: [")
@example("rules:\n\t- name: a")
@example("a: &a [*a, *a]\nrules: *a")
@example("!!binary rules:")  # found by this test in CI: a key the safe loader cannot build
@example("rules:\n  - !!python/object:os.system name: x")
@given(text=yamlish)
def test_yamlish_text_loads_or_fails_with_file_and_position(tmp_path: Path, text: str) -> None:
    """Arbitrary YAML-ish text: a RuleSet or a RuleFileError at a line:column in the file."""
    check_load(_write(tmp_path, text), text)


@st.composite
def mutated_rule_files(draw: st.DrawFn) -> str:
    """A shipped rule set with a few random edits."""
    source = draw(st.sampled_from(SHIPPED)).read_text(encoding="utf-8")
    lines = source.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        edit = draw(
            st.sampled_from(
                ["drop", "dup", "swap", "indent", "dedent", "splice", "token", "truncate"]
            )
        )
        line = lines[at]
        if edit == "drop":
            del lines[at]
        elif edit == "dup":
            lines.insert(at, line)
        elif edit == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], line
        elif edit == "indent":
            lines[at] = draw(st.sampled_from([" ", "  ", "\t", "    "])) + line
        elif edit == "dedent":
            lines[at] = line.lstrip()
        elif edit == "splice":
            pos = draw(st.integers(0, len(line)))
            lines[at] = line[:pos] + draw(st.text(max_size=4)) + line[pos:]
        elif edit == "token":
            pos = draw(st.integers(0, len(line)))
            lines[at] = line[:pos] + draw(st.sampled_from(TOKENS)) + line[pos:]
        else:
            lines = lines[: at + 1]
            lines[-1] = line[: draw(st.integers(0, len(line)))]
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


@settings(FAST, max_examples=min(FAST.max_examples, 50))
@given(text=mutated_rule_files())
def test_mutated_shipped_rule_files_load_or_fail_with_file_and_position(
    tmp_path: Path, text: str
) -> None:
    """Shipped rule sets with random edits: a RuleSet or a RuleFileError at a position."""
    check_load(_write(tmp_path, text), text)


@settings(FAST, max_examples=min(FAST.max_examples, 60))
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_load_or_fail_with_the_file_named(tmp_path: Path, data: bytes) -> None:
    """Raw bytes (often not UTF-8): a RuleSet or a RuleFileError naming the file."""
    path = tmp_path / "rules.yaml"
    path.write_bytes(data)
    try:
        load_rules([path])
    except RuleFileError as exc:
        assert exc.file == str(path)
        assert exc.where is None or _WHERE.match(exc.where), exc.where


@pytest.mark.soak
@LONG
@given(text=st.one_of(yamlish, mutated_rule_files()))
def test_soak_rule_files_load_or_fail_with_file_and_position(tmp_path: Path, text: str) -> None:
    """The long profile: 20,000 YAML-ish and mutated rule files."""
    check_load(_write(tmp_path, text), text)
