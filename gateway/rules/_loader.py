"""Rule files -> ``RuleSet``, with every error at its file:line:column, naming the rule.

load_rules(paths, mode=)    -> RuleSet             raises RuleFileError (the first error)
check_rule_files(paths)     -> list[RuleFileError]  every error of every file
parse_rules(text, file=)    -> RuleSet             the same, from a string
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.errors import RuleFileError
from gateway.textfile import read_text

from ._addresses import AddressMatcher
from ._compile import compile_rule
from ._engine import Mode, RuleSet
from ._lists import NEWER_KEYS, list_path, load_list_file, references
from ._model import ACTION_KEYS, CONDITION_KEYS, RuleFileModel
from ._rule import Rule
from ._yaml import Located, YamlDoc, YamlProblem, parse_yaml

__all__ = ["check_rule_files", "describe_error", "load_rules", "parse_rules", "position_of"]

_ALL_KEYS = sorted(
    {
        *CONDITION_KEYS,
        *ACTION_KEYS,
        "name",
        "description",
        "enabled",
        "audit",
        "when",
        "actions",
        "stop",
        "rules",
        "below",
        "above",
        "kind",
        "value",
        "matches",
        "contains",
        "exists",
        "content_type",
        *NEWER_KEYS,
    }
)

_TYPE_TEXT = {
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
}


@dataclass(slots=True)
class _File:
    """One rule file being loaded."""

    name: str
    doc: YamlDoc
    model: RuleFileModel | None = None
    lists: dict[str, list[AddressMatcher]] = field(default_factory=dict)
    list_files: list[str] = field(default_factory=list)


def load_rules(paths: Sequence[Path | str], *, mode: Mode = "enforce") -> RuleSet:
    """Load and compile rule files, evaluated in the order given.

    Raises ``RuleFileError`` (file, ``line:column``, message naming the rule) for the
    first error; duplicate rule names across files are an error too."""
    files, errors = _load(paths, first_only=True)
    if errors:
        raise errors[0]
    return _compile(files, mode)


def parse_rules(text: str, *, file: str = "<string>", mode: Mode = "enforce") -> RuleSet:
    """``load_rules`` for one file's text (tests, ``explain --rules -``)."""
    loaded, errors = _load_text(text, file, first_only=True)
    if errors:
        raise errors[0]
    assert loaded is not None
    errors = _duplicate_names([loaded]) + _thread_refs([loaded])
    if errors:
        raise errors[0]
    return _compile([loaded], mode)


def check_rule_files(paths: Sequence[Path | str]) -> list[RuleFileError]:
    """Every error in these files (empty when they load), in file and line order."""
    return _load(paths, first_only=False)[1]


def _load(
    paths: Sequence[Path | str], *, first_only: bool
) -> tuple[list[_File], list[RuleFileError]]:
    files: list[_File] = []
    errors: list[RuleFileError] = []
    for path in paths:
        name = str(path)
        try:
            text = read_text(path, error=RuleFileError)
        except RuleFileError as exc:
            errors.append(exc)
        else:
            loaded, file_errors = _load_text(text, name, first_only=first_only)
            errors.extend(file_errors)
            if loaded is not None and not file_errors:
                files.append(loaded)
        if errors and first_only:
            return files, errors
    errors.extend(_duplicate_names(files))
    if not errors:
        errors.extend(_thread_refs(files))
    return files, errors


def _load_text(
    text: str, name: str, *, first_only: bool
) -> tuple[_File | None, list[RuleFileError]]:
    try:
        doc = parse_yaml(text)
    except YamlProblem as exc:
        where = f"{exc.line}:{exc.column}" if exc.line else None
        return None, [RuleFileError(exc.message, file=name, where=where)]
    loaded = _File(name, doc)
    errors: list[tuple[int, int, RuleFileError]] = []
    for path, message, line, column in doc.problems:
        errors.append((line, column, _error(loaded, path, message, line, column)))
    if doc.data is None:
        errors.append(
            (
                1,
                1,
                RuleFileError(
                    "empty rule file: expected a mapping with 'rules'", file=name, where="1:1"
                ),
            )
        )
    else:
        try:
            loaded.model = RuleFileModel.model_validate(doc.data)
        except ValidationError as exc:
            # A missing key is reported at its mapping: at the same place, the other
            # errors (an unknown key that may be the misspelt missing one) come first.
            details = sorted(exc.errors(), key=lambda d: d["type"] == "missing")
            for detail in details:
                errors.append(_from_pydantic(loaded, detail))
        if loaded.model is not None and not errors:
            errors.extend(_load_lists(loaded))
    errors.sort(key=lambda e: (e[0], e[1]))
    out = [e[2] for e in errors]
    if first_only and len(out) > 1:
        first = out[0]
        more = len(out) - 1
        out = [
            RuleFileError(
                f"{first.message} (and {more} more error{'s' if more > 1 else ''})",
                file=first.file,
                where=first.where,
            )
        ]
    return (loaded if not out else None), out


def _rule_label(loaded: _File, path: tuple[str | int, ...]) -> str | None:
    """``rule 'name'`` (or ``rule #3`` when it has no valid name) for a path in a rule."""
    if len(path) < 2 or path[0] != "rules" or not isinstance(path[1], int):
        return None
    rules = loaded.doc.data.get("rules") if isinstance(loaded.doc.data, dict) else None
    rule = rules[path[1]] if isinstance(rules, list) and path[1] < len(rules) else None
    name = rule.get("name") if isinstance(rule, dict) else None
    return f"rule '{name}'" if isinstance(name, str) and name else f"rule #{path[1] + 1}"


def _path_text(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _error(
    loaded: _File, path: tuple[str | int, ...], message: str, line: int, column: int
) -> RuleFileError:
    rule = _rule_label(loaded, path)
    inner = path[2:] if rule else path
    where_in = _path_text(inner)
    parts = [p for p in (rule, where_in) if p]
    text = ": ".join([*parts, message])
    return RuleFileError(text, file=loaded.name, where=f"{line}:{column}")


def _container(path: Sequence[str | int]) -> str:
    """What kind of mapping ``path`` is: file, rule, condition, action, or the key of
    the sub-condition (``sentiment``...)."""
    kind = "file"
    rest: Sequence[str | int] = path
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        kind, rest = "rule", path[2:]
    for part in rest:
        if isinstance(part, int):
            continue
        if kind == "rule":
            kind = "condition" if part == "when" else "action" if part == "actions" else part
        elif kind == "condition":
            kind = "condition" if part in ("all", "any", "not") else part
        else:
            kind = part
    return kind


def _unknown_key(key: str, container: str) -> str:
    if container == "action":
        hint = difflib.get_close_matches(key, ACTION_KEYS, n=1)
        known = f"did you mean {hint[0]!r}?" if hint else "actions: " + ", ".join(ACTION_KEYS)
        return f"unknown action {key!r} ({known})"
    if container == "condition":
        hint = difflib.get_close_matches(key, CONDITION_KEYS, n=1)
        known = f"did you mean {hint[0]!r}?" if hint else "conditions: " + ", ".join(CONDITION_KEYS)
        return f"unknown condition {key!r} ({known})"
    hint = difflib.get_close_matches(key, _ALL_KEYS, n=1)
    place = "" if container in ("file", "rule") else f" in {container}"
    return f"unknown key {key!r}{place}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_error(detail: ErrorDetails, path: tuple[str | int, ...]) -> str:
    kind = detail["type"]
    ctx: dict[str, Any] = dict(detail.get("ctx") or {})
    loc = detail["loc"]
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]), _container(path[:-1]))
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    if kind == "less_than_equal":
        return f"must be <= {_num(ctx.get('le'))}"
    if kind == "greater_than_equal":
        return f"must be >= {_num(ctx.get('ge'))}"
    if kind == "string_type" and isinstance(detail.get("input"), bool | int | float):
        return (
            f"must be a string, got {detail['input']!r}: quote it "
            "(in YAML, unquoted yes/no/on/off/true/false and numbers are not text)"
        )
    if kind in _TYPE_TEXT:
        return _TYPE_TEXT[kind]
    message = detail["msg"]
    if message.startswith("Input should be "):
        return "must be " + message[len("Input should be ") :].replace("True", "true")
    return message


def position_of(doc: YamlDoc, detail: ErrorDetails) -> tuple[tuple[str | int, ...], int, int]:
    """Where a pydantic error belongs in the YAML: the path, line and column."""
    path, located, on_key = doc.locate(detail["loc"])
    ctx = detail.get("ctx") or {}
    key = ctx.get("key") if isinstance(ctx, dict) else None
    if key and (*path, key) in doc.positions:
        path = (*path, key)
        located = doc.positions[path]
        on_key = True
    if detail["type"] == "extra_forbidden":
        on_key = True
    line, column = _position(located, on_key)
    return path, line, column


def _from_pydantic(loaded: _File, detail: ErrorDetails) -> tuple[int, int, RuleFileError]:
    path, line, column = position_of(loaded.doc, detail)
    return line, column, _error(loaded, path, describe_error(detail, path), line, column)


def _position(located: Located, on_key: bool) -> tuple[int, int]:
    if on_key:
        return located.key_line, located.key_column
    return located.line, located.column


def _at(loaded: _File, path: tuple[str | int, ...], message: str) -> tuple[int, int, RuleFileError]:
    located = loaded.doc.positions[path]
    return located.line, located.column, _error(loaded, path, message, located.line, located.column)


def _load_lists(loaded: _File) -> list[tuple[int, int, RuleFileError]]:
    """Read the file's ``lists`` and check every ``{list: NAME}`` names one of them.
    A list file's own errors point into it (sorted first: line 0)."""
    assert loaded.model is not None
    errors: list[tuple[int, int, RuleFileError]] = []
    for name, value in (loaded.model.lists or {}).items():
        file = list_path(loaded.name, value)
        loaded.list_files.append(str(file))
        matchers, problems = load_list_file(file, name)
        if problems and problems[0].where is None:  # unreadable: point at the entry too
            errors.append(_at(loaded, ("lists", name), f"list '{name}': {problems[0]}"))
            continue
        errors.extend((0, 0, p) for p in problems)
        loaded.lists[name] = matchers
    for kind, name, ref in references(loaded.doc):
        if kind == "list" and name not in (loaded.model.lists or {}):
            known = ", ".join(sorted(loaded.model.lists or {})) or "none"
            errors.append(_at(loaded, ref, f"unknown list {name!r} (lists of this file: {known})"))
    return errors


def _thread_refs(files: Sequence[_File]) -> list[RuleFileError]:
    """``thread: {matched: RULE}`` must name a rule of the set (a typo never matches)."""
    names = {rule.name for f in files if f.model is not None for rule in f.model.rules}
    errors: list[RuleFileError] = []
    for loaded in files:
        for kind, name, path in references(loaded.doc):
            if kind == "thread" and name not in names:
                hint = difflib.get_close_matches(name, sorted(names), n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                errors.append(_at(loaded, path, f"no rule named {name!r}{more}")[2])
    return errors


def _duplicate_names(files: Sequence[_File]) -> list[RuleFileError]:
    first: dict[str, str] = {}
    errors: list[RuleFileError] = []
    for loaded in files:
        assert loaded.model is not None
        for index, rule in enumerate(loaded.model.rules):
            located = loaded.doc.positions[("rules", index, "name")]
            here = f"{loaded.name}:{located.line}"
            if rule.name in first:
                errors.append(
                    RuleFileError(
                        f"rule '{rule.name}': duplicate rule name "
                        f"(first defined at {first[rule.name]})",
                        file=loaded.name,
                        where=f"{located.line}:{located.column}",
                    )
                )
            else:
                first[rule.name] = here
    return errors


def _compile(files: Sequence[_File], mode: Mode) -> RuleSet:
    rules: list[Rule] = []
    for loaded in files:
        assert loaded.model is not None
        for index, model in enumerate(loaded.model.rules):
            line = loaded.doc.positions[("rules", index)].line
            rules.append(
                compile_rule(
                    model,
                    file=loaded.name,
                    line=line,
                    file_audit=loaded.model.audit,
                    lists=loaded.lists,
                )
            )
    return RuleSet(
        rules,
        mode=mode,
        files=[f.name for f in files],
        list_files=[p for f in files for p in f.list_files],
    )
