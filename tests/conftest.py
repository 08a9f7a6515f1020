"""Hypothesis profiles for the whole suite, the loops of ``both_loops`` tests, and the
one ``emulator`` fixture (the Communications Mining emulator over HTTP).

``CMGW_HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) derandomizes hypothesis: every CI run
tries the same examples, so a landing never depends on what a random seed happened to
find. Local runs (``./scripts/test``) and the soaks keep exploring new random examples,
which is where the fuzzers find new bugs; each one found becomes an ``@example``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop
from hypothesis import settings

from gateway.testing import EmulatorHandle, running_emulator

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


# -- the emulator ---------------------------------------------------------------------

# ``pytest.mark.emulator(...)`` options that are not ``running_emulator`` arguments.
_FIXTURE_OPTIONS = {"per_test", "faults", "reset", "token_env"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "emulator(per_test=False, faults=None, reset=False, token_env=None, **start): "
        "how the `emulator` fixture starts and prepares the emulator (tests/conftest.py)",
    )


def _emulator_options(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    marker = node.get_closest_marker("emulator")
    return dict(marker.kwargs) if marker is not None else {}


def _start_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _FIXTURE_OPTIONS}


@pytest.fixture(scope="module")
def module_emulator(request: pytest.FixtureRequest) -> Iterator[EmulatorHandle]:
    """One emulator for the module (starting one costs about a second), started with the
    options of the module's ``pytest.mark.emulator``."""
    with running_emulator(**_start_options(_emulator_options(request.node))) as handle:
        yield handle


@pytest.fixture
def emulator(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmulatorHandle]:
    """The Communications Mining emulator over real HTTP, as ``pytest.mark.emulator`` (on
    the module or the test) says:

    - ``per_test=True``: a new emulator for this test, else the module's, shared;
    - ``faults={...}``: ``set_faults(**faults)`` before the test (the shared one keeps
      what the previous test set otherwise);
    - ``reset=True``: an empty ledger and request counters before the test;
    - ``token_env="REINFER_TOKEN"``: its token in that environment variable;
    - any other option is a ``running_emulator`` argument (``token``, ``latency_ms``,
      ``fail_rate``, ``fail_status``, ``seed``...).
    """
    options = _emulator_options(request.node)
    if options.get("per_test"):
        with running_emulator(**_start_options(options)) as handle:
            yield _prepared(handle, options, monkeypatch)
        return
    handle = request.getfixturevalue("module_emulator")
    yield _prepared(handle, options, monkeypatch)


def _prepared(
    handle: EmulatorHandle, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> EmulatorHandle:
    if options.get("faults") is not None:
        handle.set_faults(**options["faults"])
    if options.get("reset"):
        handle.reset()
    if options.get("token_env"):
        monkeypatch.setenv(options["token_env"], handle.token or "")
    return handle


@pytest.fixture
def emu(emulator: EmulatorHandle) -> EmulatorHandle:
    """The ``emulator`` fixture by its short name."""
    return emulator
