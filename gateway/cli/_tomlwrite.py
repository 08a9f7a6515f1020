"""A small TOML writer for ``config show`` (the config holds only scalars, arrays and
tables of those, so this covers all of it)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps"]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_scalar(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if value is None:
        return '""'
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key, ensure_ascii=False)


def dumps(doc: Mapping[str, Mapping[str, Any]], comments: Mapping[str, str] | None = None) -> str:
    """``{section: {key: value}}`` as TOML; ``comments`` maps ``section.key`` to a
    trailing comment."""
    comments = comments or {}
    out: list[str] = []
    for section, table in doc.items():
        out.append(f"[{section}]")
        for key, value in table.items():
            line = f"{_key(key)} = {_scalar(value)}"
            note = comments.get(f"{section}.{key}")
            out.append(f"{line}  # {note}" if note else line)
        out.append("")
    return "\n".join(out)
