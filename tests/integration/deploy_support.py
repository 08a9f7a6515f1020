"""Helpers for the deploy/ tests: finding the linters, running the CLI, reading files."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.cli import main

__all__ = [
    "DEPLOY",
    "ROOT",
    "clean_env",
    "cli",
    "dockerfile_stage",
    "only",
    "tool",
    "yaml_documents",
]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def tool(name: str) -> str | None:
    """A linter installed by the dev extra (next to this interpreter) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without config overrides that would leak into a child gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CM_GATEWAY_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def cli(*args: str) -> tuple[int, str, str]:
    """``cm-gateway ARGS`` through the real entry point, in this process (a new Python
    per command costs seconds on this machine): (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``path``."""
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.load_all(f, Loader=_LOADER) if doc]


def dockerfile_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last build stage, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word.upper(), rest.strip()))
    return stages[-1]


def only(instructions: list[tuple[str, str]], name: str) -> str:
    """The arguments of the one ``name`` instruction."""
    values = [args for word, args in instructions if word == name]
    assert len(values) == 1, f"expected one {name}, got {values}"
    return values[0]
