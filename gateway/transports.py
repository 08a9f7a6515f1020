"""Transports by what they do, not by class.

uvloop's transports (``[smtp] event_loop = "uvloop"``) do not register with asyncio's
ABCs: ``isinstance(t, asyncio.WriteTransport)`` is False for a uvloop TCP transport that
writes perfectly well. A check by class would silently skip a 421, or fail an assert and
turn every delivery into a 451.
"""

from __future__ import annotations

import asyncio
from typing import cast

__all__ = ["stream_transport"]


def stream_transport(transport: object) -> asyncio.Transport | None:
    """``transport`` as a full (read/write/abort) transport, or None if it is not one."""
    if transport is None:
        return None
    for method in ("write", "close", "abort", "is_closing"):
        if not callable(getattr(transport, method, None)):
            return None
    return cast(asyncio.Transport, transport)
