"""``add_header`` value templates: ``{labels}``, ``{top_label}``, ``{top_probability}``,
``{rule}``, ``{model_version}``; ``{{`` and ``}}`` are literal braces.

Templates are parsed once at load time into literal and placeholder parts. A placeholder
with nothing to say expands to the empty string: for an unclassified message (or one with
no label above the threshold) ``{labels}``, ``{top_label}`` and ``{top_probability}`` are
``""``; ``{model_version}`` is ``""`` when the model version is unknown. ``{rule}`` is always
the name of the rule whose action it is.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

__all__ = ["PLACEHOLDERS", "Template", "parse_template"]

PLACEHOLDERS: tuple[str, ...] = (
    "labels",
    "top_label",
    "top_probability",
    "rule",
    "model_version",
)


class Template:
    """A parsed template: literal strings and placeholder names, expanded by ``render``."""

    __slots__ = ("names", "parts", "text")

    def __init__(self, text: str, parts: tuple[tuple[bool, str], ...]) -> None:
        self.text = text
        self.parts = parts  # (is_placeholder, literal text or placeholder name)
        self.names = frozenset(value for is_name, value in parts if is_name)

    def render(self, values: Mapping[str, str]) -> str:
        if not self.names:
            return self.parts[0][1] if self.parts else ""
        return "".join([values[v] if is_name else v for is_name, v in self.parts])


def parse_template(text: str) -> Template:
    """Parse ``text``; raises ValueError naming the bad placeholder."""
    parts: list[tuple[bool, str]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(
            f"bad placeholder syntax ({exc}); write {{{{ and }}}} for braces"
        ) from None
    for literal, name, spec, conversion in parsed:
        if literal:
            parts.append((False, literal))
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{name}}} (known: {known})")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no format or conversion")
        parts.append((True, name))
    merged: list[tuple[bool, str]] = []
    for part in parts:
        if merged and not part[0] and not merged[-1][0]:
            merged[-1] = (False, merged[-1][1] + part[1])
        else:
            merged.append(part)
    return Template(text, tuple(merged))
