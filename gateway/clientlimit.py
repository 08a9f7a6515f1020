"""Per-client connection limits for a listener (SMTP front, milter front): how many
connections one address may hold at once, and how many it may open per minute, as
Postfix's ``smtpd_client_connection_count_limit`` and ``smtpd_client_connection_rate_limit``.
Exempt addresses (the front decides: relay and trusted networks) are never limited, as
Postfix exempts ``mynetworks``.

    limiter = ClientLimiter(max_per_client=50, rate_per_minute=600, exempt=policy.exempt)
    refusal = limiter.admit("192.0.2.7")     # None: admitted, counted until release()
    ...
    limiter.release("192.0.2.7")             # when that connection closes
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from enum import Enum

__all__ = ["ClientLimiter", "LimitReason"]

RATE_WINDOW = 60.0


class LimitReason(Enum):
    """Why ``ClientLimiter.admit`` refused a connection."""

    CONCURRENCY = "per-client connection limit"
    RATE = "per-client connection rate"


class ClientLimiter:
    """Counts live connections and recent connection attempts per client address.
    ``0`` turns a limit off. Not thread-safe: one per event loop."""

    def __init__(
        self,
        *,
        max_per_client: int,
        rate_per_minute: int,
        exempt: Callable[[str], bool] = lambda _ip: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_client = max_per_client
        self.rate_per_minute = rate_per_minute
        self._exempt = exempt
        self._clock = clock
        self._live: collections.Counter[str] = collections.Counter()
        self._recent: dict[str, collections.deque[float]] = {}

    def live(self, ip: str) -> int:
        """Connections ``ip`` holds now (counted ones only)."""
        return self._live[ip]

    def admit(self, ip: str) -> LimitReason | None:
        """None, and count the connection until ``release(ip)``; or why it is refused.
        A refused attempt counts toward the rate too (a client hammering past the limit
        stays refused)."""
        if not ip or self._exempt(ip):
            return None
        if self.rate_per_minute:
            now = self._clock()
            # Re-inserted at each attempt: the table stays ordered by last activity.
            recent = self._recent.pop(ip, None) or collections.deque()
            self._recent[ip] = recent
            while recent and now - recent[0] >= RATE_WINDOW:
                recent.popleft()
            recent.append(now)
            if len(recent) > self.rate_per_minute:
                return LimitReason.RATE
            self._forget_idle(now)
        if self.max_per_client and self._live[ip] >= self.max_per_client:
            return LimitReason.CONCURRENCY
        self._live[ip] += 1
        return None

    def release(self, ip: str) -> None:
        """One admitted connection of ``ip`` ended."""
        if self._live[ip] <= 1:
            del self._live[ip]
        else:
            self._live[ip] -= 1

    def _forget_idle(self, now: float) -> None:
        # Bounded memory under a spray of source addresses: the least recently active
        # addresses come first; drop those gone quiet, at most two per call (each call
        # adds at most one), so that admit stays O(1) amortised.
        for _ in range(2):
            ip = next(iter(self._recent))
            recent = self._recent[ip]
            if recent and now - recent[-1] < RATE_WINDOW:
                return
            del self._recent[ip]
