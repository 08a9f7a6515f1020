"""rules/schema.json is generated from the loader's model and accepts the shipped rule sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.rules import load_rules, render_schema, rules_json_schema
from tests.unit.test_rules_loader import KITCHEN_SINK

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "rules" / "schema.json"
SHIPPED = sorted((ROOT / "rules").glob("*.yaml"))

jsonschema = pytest.importorskip("jsonschema")


def validator() -> Any:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_the_generated_one() -> None:
    """rules/schema.json equals rules_json_schema(); regenerate: python -m gateway.rules."""
    assert json.loads(SCHEMA.read_text(encoding="utf-8")) == rules_json_schema()
    assert SCHEMA.read_text(encoding="utf-8") == render_schema()


def test_there_are_shipped_rule_sets_to_check() -> None:
    """The shipped rule sets exist (so the schema test below checks something)."""
    assert SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_rule_set_validates_against_the_schema_and_loads(path: Path) -> None:
    """Each rules/*.yaml is valid for the JSON Schema and for the loader."""
    validator().validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert len(load_rules([path])) > 0


def test_schema_accepts_every_key_the_loader_accepts() -> None:
    """The file using every condition and action is valid for the schema too."""
    validator().validate(yaml.safe_load(KITCHEN_SINK))


@pytest.mark.parametrize(
    "document",
    [
        {"rules": [{"name": "a", "when": {"lable": "X"}}]},
        {"rules": [{"name": "a", "actions": [{"forward": "x@example.com"}]}]},
        {"rules": [{"name": "a", "when": {"label": "X", "min_probability": 1.5}}]},
        {"rules": [{"name": "bad name"}]},
        {"rules": [{"when": {"label": "X"}}]},
        {"rule": []},
    ],
)
def test_schema_rejects_what_the_loader_rejects_structurally(document: dict[str, Any]) -> None:
    """Unknown keys, out-of-range thresholds, bad names, missing keys fail the schema."""
    assert not validator().is_valid(document)


SHIPPED_TESTS = sorted((ROOT / "rules" / "tests").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_TESTS, ids=[p.name for p in SHIPPED_TESTS])
def test_schema_knows_the_rule_test_file_format(path: Path) -> None:
    """The shipped expectation files are valid; a test without `expect` or with an
    unknown verdict is not (a document with `tests` is checked as a test file)."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    validator().validate(document)
    broken = {"rules": ["x.yaml"], "tests": [{"name": "t", "message": "m.eml"}]}
    assert not validator().is_valid(broken)
    broken["tests"][0]["expect"] = {"verdict": "maybe"}  # type: ignore[index]
    assert not validator().is_valid(broken)
    broken["tests"][0]["expect"] = {"verdict": "deliver"}  # type: ignore[index]
    assert validator().is_valid(broken)
