"""Pydantic's validation errors told as a rule writer reads them, at their line and column.

describe_error(detail, path)  -> "unknown action 'redirectt' (did you mean 'redirect'?)"
position_of(doc, detail)      -> (path, line, column) in the YAML
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic_core import ErrorDetails

from ._lists import NEWER_KEYS
from ._model import ACTION_KEYS, CONDITION_KEYS
from ._yaml import Located, YamlDoc

__all__ = ["describe_error", "path_text", "position", "position_of"]

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


def path_text(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


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
    line, column = position(located, on_key)
    return path, line, column


def position(located: Located, on_key: bool) -> tuple[int, int]:
    """The line and column of a value, or of its key."""
    if on_key:
        return located.key_line, located.key_column
    return located.line, located.column
