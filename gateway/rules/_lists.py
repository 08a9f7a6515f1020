"""``lists:`` pattern files, and the names rules refer to (``{list: NAME}``,
``thread: {matched: RULE}``), checked at load time with their line and column.

A list file holds one address pattern a line (the patterns ``from``/``to`` take), blank
lines and ``#`` comments (a ``#`` at the start of a line or after white space). Its path
is relative to the rule file. A bad line is refused with the list file's path and line;
the list files are part of what a change reloads (``RuleSet.watched_files``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.errors import RuleFileError
from gateway.textfile import read_text

from ._addresses import AddressMatcher, check_address_pattern, compile_address_pattern
from ._yaml import YamlDoc

__all__ = ["NEWER_KEYS", "list_path", "load_list_file", "references"]

# Keys of lists, time, thread and of a test file, for the loader's did-you-mean hints.
NEWER_KEYS = [
    "lists",
    "list",
    "days",
    "between",
    "tz",
    "matched",
    "tests",
    "message",
    "envelope",
    "predictions",
    "at",
    "thread",
    "expect",
    "verdict",
    "recipients",
    "headers",
    "removed_headers",
    "reply",
    "subject",
    "body",
]

_COMMENT = re.compile(r"(?:^|\s)#.*$")
YamlPath = tuple[str | int, ...]


def list_path(rule_file: str, value: str) -> Path:
    """Where a ``lists`` entry points: relative to the rule file's directory."""
    path = Path(value)
    if path.is_absolute():
        return path
    return Path(rule_file).parent / path


def load_list_file(path: Path, name: str) -> tuple[list[AddressMatcher], list[RuleFileError]]:
    """The patterns of one list file, or the errors of its bad lines (file:line:col)."""
    try:
        text = read_text(path, error=RuleFileError)
    except RuleFileError as exc:
        return [], [exc]
    matchers: list[AddressMatcher] = []
    errors: list[RuleFileError] = []
    for number, line in enumerate(text.splitlines(), 1):
        pattern = _COMMENT.sub("", line).strip()
        if not pattern:
            continue
        problem = check_address_pattern(pattern)
        if problem:
            column = line.index(pattern[0]) + 1
            errors.append(
                RuleFileError(
                    f"list '{name}': {problem}", file=str(path), where=f"{number}:{column}"
                )
            )
            continue
        matchers.append(compile_address_pattern(pattern))
    return matchers, errors


def _walk(condition: Any, path: YamlPath) -> Iterator[tuple[str, str, YamlPath]]:
    if not isinstance(condition, dict):
        return
    for key in ("from", "to"):
        value = condition.get(key)
        if isinstance(value, dict) and isinstance(value.get("list"), str):
            yield "list", value["list"], (*path, key, "list")
    thread = condition.get("thread")
    if isinstance(thread, dict) and isinstance(thread.get("matched"), str):
        yield "thread", thread["matched"], (*path, "thread", "matched")
    for key in ("all", "any"):
        children = condition.get(key)
        if isinstance(children, list):
            for index, child in enumerate(children):
                yield from _walk(child, (*path, key, index))
    yield from _walk(condition.get("not"), (*path, "not"))


def references(doc: YamlDoc) -> Iterator[tuple[str, str, YamlPath]]:
    """``(kind, name, path)`` for every ``{list: NAME}`` (kind ``list``) and
    ``thread: {matched: RULE}`` (kind ``thread``) in a rule file, in order."""
    rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
    if not isinstance(rules, list):
        return
    for index, rule in enumerate(rules):
        if isinstance(rule, dict):
            yield from _walk(rule.get("when"), ("rules", index, "when"))
