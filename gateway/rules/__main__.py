"""``python -m gateway.rules``: print the rule file JSON Schema (``rules/schema.json``)."""

from __future__ import annotations

from ._schema import render_schema

print(render_schema(), end="")
