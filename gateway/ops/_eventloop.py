"""The event loop ``cm-gateway serve`` runs on: uvloop (default) or the stdlib's.

uvloop does the socket work in C: on this project's benchmark it takes about a quarter
off the CPU aiosmtpd needs per received message (3.5 -> 2.6 ms, null handler, 4 KB
messages), which is where a relay spends its time. ``[smtp] event_loop = "asyncio"``
keeps the stdlib loop, e.g. to rule uvloop out while chasing a problem.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run_loop"]

T = TypeVar("T")


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    # The loop actually running is named in the smtp_listening log line (server.py).
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # a platform without uvloop wheels: the stdlib loop still works
            return asyncio.new_event_loop
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_loop(main: Coroutine[Any, Any, T], kind: str) -> T:
    """``asyncio.run(main)`` on the loop ``kind`` names."""
    with asyncio.Runner(loop_factory=_loop_factory(kind)) as runner:
        return runner.run(main)
