"""Protocol conformance of the milter front, checked by OpenDKIM's ``miltertest`` (Debian
package ``miltertest``): an MTA side written by others, scripted in Lua
(tests/fixtures/miltertest/actions.lua)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from gateway.milter import MilterServer
from gateway.pipeline import build_processor

from .pipeline_support import RULES, make_config

SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "miltertest" / "actions.lua"

HOLD_RULES = (
    RULES.replace("Contracts go through the legal portal", "100% legal portal")
    + """
  - name: hold-it
    when: { header: { name: Subject, contains: "please hold" } }
    actions:
      - hold: "held for review"
"""
)


async def test_miltertest_script_passes_against_the_milter_front(tmp_path: Path) -> None:
    miltertest = shutil.which("miltertest")
    if miltertest is None:
        pytest.skip("miltertest is not installed (scripts/test installs it)")
    cfg = make_config(tmp_path, downstream=f"maildir://{tmp_path}/unused", rules_yaml=HOLD_RULES)
    pipeline = build_processor(cfg)
    server = MilterServer("127.0.0.1:0", pipeline, buffer_limit=1_000_000, timeout=10)
    await server.start()
    try:
        port = server.address.rsplit(":", 1)[1]
        proc = await asyncio.create_subprocess_exec(
            miltertest,
            "-s",
            str(SCRIPT),
            env={**os.environ, "MILTER": f"inet:{port}@127.0.0.1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
    finally:
        await server.aclose(grace=1)
        await pipeline.aclose()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "miltertest: all checks passed" in text
