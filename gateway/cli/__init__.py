"""``cm-gateway``: the command line, one module per command."""

from ._main import main

__all__ = ["main"]
