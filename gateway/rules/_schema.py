"""``rules/schema.json``: the JSON Schema of a rule file, generated from the loader's
pydantic model (editors use it for completion; ``rules check`` is the full validation:
regexes, addresses, placeholders and ranges across keys are only checked there).

Regenerate: ``.venv/bin/python -m gateway.rules > rules/schema.json``
"""

from __future__ import annotations

import json
from typing import Any

from ._model import RuleFileModel

__all__ = ["SCHEMA_ID", "render_schema", "rules_json_schema"]

SCHEMA_ID = "https://cm-gateway.example/rules/schema.json"


def rules_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a rule file."""
    schema = RuleFileModel.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }


def render_schema() -> str:
    """The text of ``rules/schema.json``."""
    return json.dumps(rules_json_schema(), indent=2, ensure_ascii=False) + "\n"
