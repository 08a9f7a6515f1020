"""canonical_json (the text document_hash hashes): the fast path gives the json module's
octets for everything, and is the path a real document takes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pydantic_core
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway import _canonical_json as cj
from gateway.mail import build_document, parse_message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"

# Every character, lone surrogates included: documents may carry them.
ANY_TEXT = st.text(st.characters(exclude_categories=()))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.sampled_from([1e-5, 1e16, 1e22, -0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2])
    | ANY_TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=16,
)


@given(st.dictionaries(ANY_TEXT, VALUES, max_size=5))
@example({"number:Size KB": 4.1, "b": [1e-05, float("nan"), float("-inf")], "a": "\ud800"})
@example({"z": {"y": '\x00\x1f\x7f\u2028"\\/', "x": True}, "é": None, "E": 10**40})
def test_canonical_json_is_the_json_modules_text(value: dict[str, Any]) -> None:
    assert cj.canonical_json(value) == cj.canonical_json_slow(value)


class Weird(float):
    def __repr__(self) -> str:
        return "weird"


@pytest.mark.parametrize(
    "value",
    [
        {1: "int key", 2: "another"},
        {None: 1},
        {"a": Weird(1.5)},
        {"a": True, "b": {2.5: "float key"}},
    ],
)
def test_what_json_encodes_but_the_fast_path_cannot_vouch_for_takes_jsons_path(
    value: dict[Any, Any],
) -> None:
    assert cj.canonical_json(value) == cj.canonical_json_slow(value)


def test_keys_of_several_types_fail_as_in_json() -> None:
    with pytest.raises(TypeError):
        cj.canonical_json({1: "a", "b": 2})


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.eml")))
def test_every_fixture_document_takes_the_fast_path(name: str) -> None:
    """Not only the same octets: a real document must not fall back to json (the fast
    path would silently stop paying), floats of its user properties included."""
    raw = (FIXTURES / name).read_bytes()
    doc = build_document(
        parse_message(raw), raw, user_properties={"number:Score": 0.7, "string:Team": "AP"}
    )
    assert any(type(v) is float and not math.isnan(v) for v in doc["user_properties"].values())
    fast = pydantic_core.to_json(cj._sorted(doc))  # raises if not plain
    assert fast == cj.canonical_json_slow(doc)
