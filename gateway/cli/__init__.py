"""``cm-gateway``: the command line, one module per command."""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
