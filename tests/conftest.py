"""Hypothesis profiles for the whole suite, and the loops of ``both_loops`` tests.

``CMGW_HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) derandomizes hypothesis: every CI run
tries the same examples, so a landing never depends on what a random seed happened to
find. Local runs (``./scripts/test``) and the soaks keep exploring new random examples,
which is where the fuzzers find new bugs; each one found becomes an ``@example``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

import pytest
import uvloop
from hypothesis import settings

settings.register_profile("ci", derandomize=True)
_profile = os.environ.get("CMGW_HYPOTHESIS_PROFILE")
if _profile:
    settings.load_profile(_profile)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked ``both_loops`` run once per ``[smtp] event_loop`` choice; the rest on
    the stdlib loop (pytest-asyncio refuses None from this hook)."""
    if item.get_closest_marker("both_loops") is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
