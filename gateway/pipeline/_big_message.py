"""Work on a message that may be many megabytes, kept from stalling the event loop.

    off_loop(content, work)   ``work(content)``, in a thread past ``COPY_IN_THREAD``

Every session shares one loop: a step that holds it for 100 ms holds every session.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable
from typing import TypeVar

__all__ = ["COPY_IN_THREAD", "HEAVY_PARSES", "PARSE_IN_THREAD", "off_loop", "release_memory"]

# Past these sizes the parse (PARSE_IN_THREAD) and whole-message copies (COPY_IN_THREAD)
# run in a thread.
PARSE_IN_THREAD = 256 * 1024
COPY_IN_THREAD = 2 << 20
# Parses past PARSE_IN_THREAD at once: each holds its message's whole MIME tree, and on 2
# cores more threads only share the same CPU while each keeps its memory (and its malloc
# arena) for longer. Measured: four hostile 4.9 MB messages at once peaked at 448 MB.
HEAVY_PARSES = 2
_T = TypeVar("_T")
_libc: ctypes.CDLL | None = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc: nothing to trim, the allocator decides
    _libc = None


async def off_loop(content: bytes, work: Callable[[bytes], _T]) -> _T:
    """``work(content)``; past ``COPY_IN_THREAD`` in a thread, for work on a big message:
    header edits copy the whole message (25 MB: ~0.1 s on a slow machine), which bytes.join
    does without the GIL; the header walks are pure Python, and a hostile message can be
    all header lines (5 MB of them: seconds), which a thread interrupts every switch
    interval (5 ms) to let the loop run, where the loop itself would wait for the end."""
    if len(content) > COPY_IN_THREAD:
        return await asyncio.to_thread(work, content)
    return work(content)


def release_memory() -> None:
    """Give the memory freed by big parses back to the system (glibc's ``malloc_trim``).

    glibc keeps freed heap in each thread's arena for reuse: after four big parses the
    process stayed at ~470 MB although nothing held it. Called when the last heavy parse
    in flight ends; it costs a few milliseconds, in a thread."""
    if _libc is not None:
        _libc.malloc_trim(0)
