"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway import redact


@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """The secret registry and the logging set-up, given back as the test found them."""
    secrets = set(redact._SECRETS)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    redact._SECRETS.clear()
    redact._SECRETS.update(secrets)
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
