"""Work on a message that may be many megabytes, kept from stalling the event loop.

    off_loop(content, work)   ``work(content)``, in a thread past ``COPY_IN_THREAD``

Every session shares one loop: a step that holds it for 100 ms holds every session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["COPY_IN_THREAD", "PARSE_IN_THREAD", "off_loop"]

# Past these sizes the parse (PARSE_IN_THREAD) and whole-message copies (COPY_IN_THREAD)
# run in a thread.
PARSE_IN_THREAD = 256 * 1024
COPY_IN_THREAD = 2 << 20
_T = TypeVar("_T")


async def off_loop(content: bytes, work: Callable[[bytes], _T]) -> _T:
    """``work(content)``; past ``COPY_IN_THREAD`` in a thread, for work on a big message:
    header edits copy the whole message (25 MB: ~0.1 s on a slow machine), which bytes.join
    does without the GIL; the header walks are pure Python, and a hostile message can be
    all header lines (5 MB of them: seconds), which a thread interrupts every switch
    interval (5 ms) to let the loop run, where the loop itself would wait for the end."""
    if len(content) > COPY_IN_THREAD:
        return await asyncio.to_thread(work, content)
    return work(content)
