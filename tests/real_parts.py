"""Real parts a test needs (Postfix, Redis, swaks...) that are missing on this machine.

A developer without them gets a skip. CI installs them (``scripts/_debs.sh``) and sets
``CMGW_REQUIRE_REAL_PARTS=1`` (``.ci/run``): there a missing part is a failure that says
what is missing, never a silent skip of the tests that need it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["REQUIRE_ENV", "missing_part"]

REQUIRE_ENV = "CMGW_REQUIRE_REAL_PARTS"


def missing_part(reason: str) -> NoReturn:
    """Skip the test because ``reason``; fail it instead when ``CMGW_REQUIRE_REAL_PARTS``
    is set (CI)."""
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(
            f"{reason}; {REQUIRE_ENV} is set, so a missing part fails the test "
            "(scripts/_debs.sh installs it)",
            pytrace=False,
        )
    pytest.skip(reason)
