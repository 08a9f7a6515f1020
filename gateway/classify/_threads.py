"""Conversation memory for ``thread: {matched: RULE}``: which rules the messages of a
thread matched, kept beside the dedup cache (``[cache] url``: memory or Redis, same TTL).

Keys are thread ids (Message-IDs, chosen by senders): they are stored hashed, so that a
huge or hostile id costs one hash and a fixed-size key. With Redis every instance and
worker shares the memory (a set per thread, ``SADD`` + ``EXPIRE``); in memory it is one
process's (an LRU bounded by ``[cache] max_entries``), whose entries are a float and a
tuple of str: objects the garbage collector stops tracking, so a full memory (100,000
threads) adds nothing to a collection's pause (a frozenset per entry made each full
collection walk 200,000 more objects: 24 -> 13 ms here with the memory full). Like the
dedup cache, the memory is an optimisation of routing, never a dependency of the mail
path: a backend that fails answers "nothing remembered" and mail keeps flowing.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Protocol

__all__ = ["MemoryThreads", "ThreadMemory", "thread_digest"]

MAX_RULES_PER_THREAD = 64
"""At most this many rule names are kept per thread (a rule set names far fewer)."""


def thread_digest(thread_id: str) -> str:
    """The fixed-size key a thread id is stored under."""
    return hashlib.sha256(thread_id.encode("utf-8", "surrogatepass")).hexdigest()


class ThreadMemory(Protocol):
    """Which rules earlier messages of a thread matched. Neither method may raise for a
    backend failure: a broken memory recalls nothing and remembers nothing."""

    async def recall(self, thread_ids: Sequence[str]) -> frozenset[str]:
        """The rules remembered under any of ``thread_ids``."""
        ...

    async def remember(self, thread_ids: Sequence[str], rules: Iterable[str]) -> None:
        """Add ``rules`` to what each of ``thread_ids`` remembers, for the TTL."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class MemoryThreads:
    """A ``ThreadMemory`` in this process: an LRU of thread -> rules, TTL per entry
    (refreshed when the thread is remembered again)."""

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()

    async def recall(self, thread_ids: Sequence[str]) -> frozenset[str]:
        """See ``ThreadMemory.recall``."""
        now = time.monotonic()
        out: set[str] = set()
        for key in map(thread_digest, thread_ids):
            item = self._data.get(key)
            if item is None:
                continue
            if item[0] < now:
                del self._data[key]
                continue
            self._data.move_to_end(key)
            out.update(item[1])
        return frozenset(out)

    async def remember(self, thread_ids: Sequence[str], rules: Iterable[str]) -> None:
        """See ``ThreadMemory.remember``."""
        names = frozenset(rules)
        if not names:
            return
        now = time.monotonic()
        for key in map(thread_digest, thread_ids):
            item = self._data.get(key)
            known = frozenset(item[1]) if item is not None and item[0] >= now else frozenset()
            merged = known | names
            if len(merged) > MAX_RULES_PER_THREAD:
                merged = known
            self._data[key] = (now + self._ttl, tuple(sorted(merged)))
            self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def aclose(self) -> None:
        """Nothing to release."""

    def __len__(self) -> int:
        return len(self._data)
