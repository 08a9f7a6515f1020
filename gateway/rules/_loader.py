"""Rule files -> ``RuleSet``, with every error at its file:line:column, naming the rule.

load_rules(paths, mode=)    -> RuleSet             raises RuleFileError (the first error)
check_rule_files(paths)     -> list[RuleFileError]  every error of every file
parse_rules(text, file=)    -> RuleSet             the same, from a string

``routes``: the configured ``[downstream.routes]`` names; when given, a ``route`` action
naming another is an error at its value. None (a rule file alone) skips that check.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.errors import RuleFileError
from gateway.textfile import read_text

from ._compile import compile_rule
from ._engine import Mode, RuleSet
from ._model import ACTION_KEYS, CONDITION_KEYS, RuleFileModel
from ._rule import Rule
from ._yaml import Located, YamlDoc, YamlProblem, parse_yaml

__all__ = ["check_rule_files", "load_rules", "parse_rules"]

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


def load_rules(
    paths: Sequence[Path | str],
    *,
    mode: Mode = "enforce",
    routes: Collection[str] | None = None,
) -> RuleSet:
    """Load and compile rule files, evaluated in the order given.

    Raises ``RuleFileError`` (file, ``line:column``, message naming the rule) for the
    first error; duplicate rule names across files are an error too."""
    files, errors = _load(paths, first_only=True, routes=routes)
    if errors:
        raise errors[0]
    return _compile(files, mode)


def parse_rules(
    text: str,
    *,
    file: str = "<string>",
    mode: Mode = "enforce",
    routes: Collection[str] | None = None,
) -> RuleSet:
    """``load_rules`` for one file's text (tests, ``explain --rules -``)."""
    loaded, errors = _load_text(text, file, first_only=True, routes=routes)
    if errors:
        raise errors[0]
    assert loaded is not None
    errors = _duplicate_names([loaded])
    if errors:
        raise errors[0]
    return _compile([loaded], mode)


def check_rule_files(
    paths: Sequence[Path | str], *, routes: Collection[str] | None = None
) -> list[RuleFileError]:
    """Every error in these files (empty when they load), in file and line order."""
    return _load(paths, first_only=False, routes=routes)[1]


def _load(
    paths: Sequence[Path | str], *, first_only: bool, routes: Collection[str] | None = None
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
            loaded, file_errors = _load_text(text, name, first_only=first_only, routes=routes)
            errors.extend(file_errors)
            if loaded is not None and not file_errors:
                files.append(loaded)
        if errors and first_only:
            return files, errors
    errors.extend(_duplicate_names(files))
    return files, errors


def _load_text(
    text: str, name: str, *, first_only: bool, routes: Collection[str] | None = None
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
        if loaded.model is not None and routes is not None:
            errors.extend(_unknown_routes(loaded, routes))
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


def _describe(detail: ErrorDetails, path: tuple[str | int, ...]) -> str:
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


def _from_pydantic(loaded: _File, detail: ErrorDetails) -> tuple[int, int, RuleFileError]:
    path, located, on_key = loaded.doc.locate(detail["loc"])
    ctx = detail.get("ctx") or {}
    key = ctx.get("key") if isinstance(ctx, dict) else None
    if key and (*path, key) in loaded.doc.positions:
        path = (*path, key)
        located = loaded.doc.positions[path]
        on_key = True
    if detail["type"] == "extra_forbidden":
        on_key = True
    line, column = _position(located, on_key)
    return line, column, _error(loaded, path, _describe(detail, path), line, column)


def _position(located: Located, on_key: bool) -> tuple[int, int]:
    if on_key:
        return located.key_line, located.key_column
    return located.line, located.column


def _unknown_routes(loaded: _File, routes: Collection[str]) -> list[tuple[int, int, RuleFileError]]:
    assert loaded.model is not None
    known = ", ".join(sorted(routes)) or "none configured"
    out = []
    for i, rule in enumerate(loaded.model.rules):
        for j, action in enumerate(rule.actions):
            if action.route is None or action.route in routes:
                continue
            path = ("rules", i, "actions", j, "route")
            line, column = _position(loaded.doc.positions[path], on_key=False)
            hint = difflib.get_close_matches(action.route, list(routes), n=1)
            message = f"unknown route {action.route!r} (" + (
                f"did you mean {hint[0]!r}?)" if hint else f"[downstream.routes]: {known})"
            )
            out.append((line, column, _error(loaded, path, message, line, column)))
    return out


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
                compile_rule(model, file=loaded.name, line=line, file_audit=loaded.model.audit)
            )
    return RuleSet(rules, mode=mode, files=[f.name for f in files])
