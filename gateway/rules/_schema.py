"""``rules/schema.json``: the JSON Schema of a rule file and of a rule test file (a
document with ``tests`` at the top), generated from the loader's pydantic models
(editors use it for completion; ``rules check`` is the full validation: regexes,
addresses, placeholders and ranges across keys are only checked there).

Regenerate: ``.venv/bin/python -m gateway.rules > rules/schema.json``
"""

from __future__ import annotations

import json
from typing import Any

from ._model import RuleFileModel
from ._testfile import RuleTestFileModel

__all__ = ["SCHEMA_ID", "render_schema", "rules_json_schema"]

SCHEMA_ID = "https://cm-gateway.example/rules/schema.json"


def rules_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a rule file, or of a test file when the
    document has ``tests``."""
    rule = RuleFileModel.model_json_schema(mode="validation")
    test = RuleTestFileModel.model_json_schema(mode="validation")
    defs = {**rule.pop("$defs", {}), **test.pop("$defs", {})}
    defs["RuleFile"], defs["RuleTestFile"] = rule, test
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "cm-gateway rule file or rule test file",
        "if": {"type": "object", "required": ["tests"]},
        "then": {"$ref": "#/$defs/RuleTestFile"},
        "else": {"$ref": "#/$defs/RuleFile"},
        "$defs": defs,
    }


def render_schema() -> str:
    """The text of ``rules/schema.json``."""
    return json.dumps(rules_json_schema(), indent=2, ensure_ascii=False) + "\n"
