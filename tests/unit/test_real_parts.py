"""A test that needs a missing real part skips for a developer and fails under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real_parts import REQUIRE_ENV, missing_part


def test_a_missing_part_is_a_skip_without_the_ci_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        missing_part("redis-server is not installed")


@pytest.mark.parametrize("value", ["1", "yes"])
def test_a_missing_part_fails_with_its_name_when_ci_requires_real_parts(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(pytest.fail.Exception, match=r"postfix is not installed.*CMGW_REQUIRE"):
        missing_part("postfix is not installed")


def test_ci_sets_the_variable_that_requires_real_parts() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert f"{REQUIRE_ENV}=1" in ci
