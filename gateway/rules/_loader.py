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
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.errors import RuleFileError
from gateway.textfile import read_text

from ._addresses import AddressMatcher
from ._compile import compile_rule
from ._describe import describe_error, path_text, position, position_of
from ._engine import Mode, RuleSet
from ._lists import list_path, load_list_file, references
from ._model import RuleFileModel
from ._rule import Rule
from ._yaml import YamlDoc, YamlProblem, parse_yaml

__all__ = ["check_rule_files", "load_rules", "parse_rules"]


@dataclass(slots=True)
class _File:
    """One rule file being loaded."""

    name: str
    doc: YamlDoc
    model: RuleFileModel | None = None
    lists: dict[str, list[AddressMatcher]] = field(default_factory=dict)
    list_files: list[str] = field(default_factory=list)


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
    errors = _duplicate_names([loaded]) + _thread_refs([loaded])
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
    if not errors:
        errors.extend(_thread_refs(files))
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
        if loaded.model is not None and not errors:
            errors.extend(_load_lists(loaded))
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


def _error(
    loaded: _File, path: tuple[str | int, ...], message: str, line: int, column: int
) -> RuleFileError:
    rule = _rule_label(loaded, path)
    inner = path[2:] if rule else path
    where_in = path_text(inner)
    parts = [p for p in (rule, where_in) if p]
    text = ": ".join([*parts, message])
    return RuleFileError(text, file=loaded.name, where=f"{line}:{column}")


def _from_pydantic(loaded: _File, detail: ErrorDetails) -> tuple[int, int, RuleFileError]:
    path, line, column = position_of(loaded.doc, detail)
    return line, column, _error(loaded, path, describe_error(detail, path), line, column)


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


def _unknown_routes(loaded: _File, routes: Collection[str]) -> list[tuple[int, int, RuleFileError]]:
    assert loaded.model is not None
    known = ", ".join(sorted(routes)) or "none configured"
    out = []
    for i, rule in enumerate(loaded.model.rules):
        for j, action in enumerate(rule.actions):
            if action.route is None or action.route in routes:
                continue
            path = ("rules", i, "actions", j, "route")
            line, column = position(loaded.doc.positions[path], on_key=False)
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
