"""What every gateway process (single, worker, batcher) shares: its secrets, its grace,
what a hangup means, and (workers, batcher) stopping when the parent is gone."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import Callable

from gateway.config import Config
from gateway.redact import register_secret

__all__ = [
    "PARENT_POLL_S",
    "YOUNG_COLLECTION_THRESHOLD",
    "hangup_stops",
    "register_secrets",
    "settle_heap",
    "shutdown_grace",
    "watch_parent",
]

# How often a worker or the batcher checks that the parent is still there.
PARENT_POLL_S = 1.0

YOUNG_COLLECTION_THRESHOLD = 10_000
"""Net allocations of container objects between collections of the youngest generation
(CPython's default is 700). A message lives 100-300 ms here, longer than 700 allocations
last under load, so every object of every message in flight was walked by collections it
survived, and again by the next generation's. Measured (300 sessions, 15,000 messages,
then 5,000 at 430/s; 2 runs each): the collector's CPU 1.47 / 1.40 s -> 0.21 / 0.23 s
(about 5 % of the gateway's CPU per message), p50 at 430/s 178 / 185 -> 167 / 168 ms;
the longest pause 36 / 25 -> 25 / 26 ms. Memory: the garbage cycles waiting for a
collection are bounded by the threshold (a few megabytes)."""


def shutdown_grace(config: Config) -> float:
    """How long sessions inside DATA (and their classifications) get to finish at shutdown."""
    return min(30.0, config.smtp.timeout)


def settle_heap() -> None:
    """Once start-up is done, in each process that serves: freeze what start-up built
    (modules, schemas, rules, clients: it lives as long as the process) out of the
    collector's walk, and collect the young generation less often (see
    ``YOUNG_COLLECTION_THRESHOLD``). Unfrozen, each full collection held the loop for
    100-170 ms here, stalling every session."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def register_secrets(config: Config) -> None:
    """Make the configured secrets unprintable (logs, replies, errors) in this process."""
    register_secret(config.classifier.token())
    register_secret(config.classifier.secret())


def hangup_stops() -> bool:
    """True when this process has a controlling terminal: SIGHUP then means the terminal
    went away, and the gateway stops like any foreground program (it used to reload and
    live on, holding its port). Without one (systemd, a daemon) SIGHUP reloads the rules.
    SIGUSR1 reloads in both cases."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


async def watch_parent(parent: int, gone: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``gone()`` once the process ``parent`` is no longer this one's parent (it died,
    even of SIGKILL, and this process was re-parented), checking every ``PARENT_POLL_S``
    until ``stop`` is set. Without it, a worker whose parent was killed would keep
    serving the port beside the gateway started in its place."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_POLL_S)
        if os.getppid() != parent:
            gone()
            return
