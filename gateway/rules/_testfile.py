"""Rule test files (``cm-gateway rules test``): the model, and loading one with every
error at its file:line:column. Running the tests needs the message preparation of the
pipeline, so it lives in the CLI; what a test file may contain is decided here, next to
the rule file model, and both are in ``rules/schema.json``.

A test file has ``rules`` (the rule files under test) and ``tests``; every path in it is
relative to the test file. See ``docs/rules.md`` for the format.
"""

from __future__ import annotations

import difflib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.errors import RuleFileError
from gateway.textfile import read_text

from ._decision import Verdict
from ._describe import describe_error, position_of
from ._fields import AddressList, HeaderName, RuleName
from ._yaml import YamlDoc, YamlProblem, parse_yaml

__all__ = ["RuleTestFileModel", "RuleTestModel", "is_test_document", "load_test_file"]

# 'hold' is listed whether or not this build has the action: a test file written for
# the milter front stays valid for the schema everywhere.
VERDICTS: tuple[str, ...] = tuple(dict.fromkeys((*get_args(Verdict), "hold")))


def _verdict(value: str) -> str:
    if value not in VERDICTS:
        raise PydanticCustomError("verdict", f"unknown verdict {value!r}: " + ", ".join(VERDICTS))
    return value


def _moment(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError(
                "at", f"bad time {value!r}: ISO 8601 with an offset, e.g. 2026-12-07T10:00:00+00:00"
            ) from None
    if isinstance(value, datetime) and value.tzinfo is None:
        raise PydanticCustomError("at", "'at' needs a UTC offset (e.g. +00:00 or Z)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class InlineMessage(_Strict):
    """A message written in the test: the gateway sees it as a plain-text mail."""

    from_: str = Field(alias="from", min_length=1)
    to: Annotated[
        list[str],
        Field(min_length=1),
        BeforeValidator(
            lambda v: [v] if isinstance(v, str) else v, json_schema_input_type=str | list[str]
        ),
    ]
    subject: str = ""
    body: str = ""
    headers: dict[HeaderName, str] | None = None


class TestEnvelope(_Strict):
    """The SMTP envelope; by default the message's From, and its To and Cc."""

    from_: str | None = Field(default=None, alias="from")
    to: AddressList | None = None


class TestThread(_Strict):
    """What earlier messages of the conversation matched (the rule names)."""

    matched: list[RuleName]


class TestExpect(_Strict):
    """What the test expects; any subset of the keys."""

    verdict: (
        Annotated[str, AfterValidator(_verdict), WithJsonSchema({"enum": list(VERDICTS)})] | None
    ) = None
    rules: list[RuleName] | None = None
    recipients: list[str] | None = None
    headers: dict[HeaderName, str] | None = None
    removed_headers: list[HeaderName] | None = None
    reply: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TestExpect:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise PydanticCustomError(
                "expect", "expect needs at least one of: " + ", ".join(type(self).model_fields)
            )
        return self


class RuleTestModel(_Strict):
    """One test: a message, what the classifier said, and what the rules must do."""

    name: str = Field(min_length=1)
    message: str | InlineMessage
    envelope: TestEnvelope | None = None
    predictions: str | dict[str, Any] | None = None
    at: (
        Annotated[
            datetime,
            BeforeValidator(_moment),
            WithJsonSchema({"type": "string", "format": "date-time"}),
        ]
        | None
    ) = None
    thread: TestThread | None = None
    expect: TestExpect


class RuleTestFileModel(_Strict):
    """A cm-gateway rule test file (YAML): the rule files under test and the tests."""

    model_config = ConfigDict(
        title="cm-gateway rule test file",
        extra="forbid",
        strict=True,
        frozen=True,
        populate_by_name=True,
    )

    description: str | None = None
    rules: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    tests: Annotated[list[RuleTestModel], Field(min_length=1)]


_TEST_KEYS = sorted(
    {
        f.alias or n
        for m in (RuleTestFileModel, RuleTestModel, TestExpect, TestEnvelope, InlineMessage)
        for n, f in m.model_fields.items()
    }
)


def is_test_document(data: Any) -> bool:
    """A YAML document with ``tests`` at the top is a test file, not a rule file."""
    return isinstance(data, dict) and "tests" in data


def _label(doc: YamlDoc, path: tuple[str | int, ...]) -> str | None:
    if len(path) < 2 or path[0] != "tests" or not isinstance(path[1], int):
        return None
    tests = doc.data.get("tests") if isinstance(doc.data, dict) else None
    test = tests[path[1]] if isinstance(tests, list) and path[1] < len(tests) else None
    name = test.get("name") if isinstance(test, dict) else None
    return f"test '{name}'" if isinstance(name, str) and name else f"test #{path[1] + 1}"


def located_error(
    doc: YamlDoc, file: str, path: tuple[str | int, ...], message: str
) -> RuleFileError:
    """An error at ``path`` of a test file, naming the test."""
    located = doc.positions.get(path) or doc.positions[()]
    label = _label(doc, path)
    return RuleFileError(
        f"{label}: {message}" if label else message,
        file=file,
        where=f"{located.line}:{located.column}",
    )


def load_test_file(
    path: Path,
) -> tuple[RuleTestFileModel | None, YamlDoc | None, list[RuleFileError]]:
    """The validated test file and its positions, or every error in it."""
    file = str(path)
    try:
        doc = parse_yaml(read_text(path, error=RuleFileError))
    except RuleFileError as exc:
        return None, None, [exc]
    except YamlProblem as exc:
        where = f"{exc.line}:{exc.column}" if exc.line else None
        return None, None, [RuleFileError(exc.message, file=file, where=where)]
    errors = [located_error(doc, file, p, m) for p, m, _, _ in doc.problems]
    if not isinstance(doc.data, dict):
        errors.append(
            RuleFileError("expected a mapping with 'rules' and 'tests'", file=file, where="1:1")
        )
        return None, doc, errors
    try:
        model = RuleTestFileModel.model_validate(doc.data)
    except ValidationError as exc:
        for detail in exc.errors():
            where_path, line, column = position_of(doc, detail)
            label = _label(doc, where_path)
            message = describe_error(detail, where_path)
            if detail["type"] == "extra_forbidden":
                key = str(detail["loc"][-1])
                hint = difflib.get_close_matches(key, _TEST_KEYS, n=1)
                message = f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            errors.append(
                RuleFileError(
                    f"{label}: {message}" if label else message, file=file, where=f"{line}:{column}"
                )
            )
        errors.sort(key=_order)
        return None, doc, errors
    return (model if not errors else None), doc, errors


def _order(error: RuleFileError) -> tuple[int, int]:
    line, _, column = (error.where or "0:0").partition(":")
    return int(line), int(column or 0)
