"""Hypothesis profiles for the whole suite.

``CMGW_HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) derandomizes hypothesis: every CI run
tries the same examples, so a landing never depends on what a random seed happened to
find. Local runs (``./scripts/test``) and the soaks keep exploring new random examples,
which is where the fuzzers find new bugs; each one found becomes an ``@example``.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
_profile = os.environ.get("CMGW_HYPOTHESIS_PROFILE")
if _profile:
    settings.load_profile(_profile)
