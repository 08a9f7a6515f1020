"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway.testing import isolated_secrets


@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """The secret registry and the logging set-up, given back as the test found them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with isolated_secrets():
        yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
