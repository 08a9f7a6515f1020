"""Benchmarks (``@pytest.mark.perf``) are skipped unless asked for: ``-m perf`` or
``CMGW_PERF=1``. They print their figures; run them with ``-s`` to see them::

    .venv/bin/pytest tests/perf -m perf -s
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = "perf" in (config.getoption("markexpr") or "") or os.environ.get("CMGW_PERF")
    if wanted:
        return
    skip = pytest.mark.skip(reason="benchmark: run with -m perf (or CMGW_PERF=1)")
    for item in items:
        if item.get_closest_marker("perf") is not None:
            item.add_marker(skip)
