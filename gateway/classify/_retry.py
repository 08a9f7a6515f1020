"""Retries of classifier calls: stamina's jittered exponential backoff inside one deadline.

One classification has one budget (``classifier.timeout``), retries included. Only
transient failures are retried (429, 5xx, transport); a refused request or a malformed
answer would fail the same way again, and a second call may bill the documents twice.

A 429's ``Retry-After`` is honoured: the next attempt waits at least that long. When the
server asks for more time than the budget has left, the ``RateLimitedError`` is raised at
once instead of sleeping into a certain timeout. Likewise, when even the shortest next
backoff would overrun the budget, the last error is raised as it is.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import stamina
import stamina.instrumentation

from gateway.errors import (
    ClassifierError,
    ClassifierTimeout,
    RateLimitedError,
    ServerError,
    TransportError,
)
from gateway.logsetup import get_logger

__all__ = ["RETRYABLE", "RetryPolicy", "call_with_retries"]

T = TypeVar("T")
log = get_logger("cm-gateway.classify")
# stamina's own retry line names "callable='<context block>' args=()" and the error's
# repr; ours (in call_with_retries) names the URL and the error, on one line.
stamina.instrumentation.set_on_retry_hooks([])

RETRYABLE: tuple[type[ClassifierError], ...] = (RateLimitedError, ServerError, TransportError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` in total (first call included). The n-th backoff is
    ``min(backoff_max, backoff_base * 2**(n-1))`` plus a jitter of up to ``backoff_base``."""

    attempts: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ValueError("attempts >= 1 and 0 < backoff_base <= backoff_max")

    def lower_bound(self, retry_number: int) -> float:
        """The backoff before retry ``retry_number`` (1-based), without jitter."""
        return min(self.backoff_max, self.backoff_base * 2.0 ** (retry_number - 1))


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: float,
    on_retry: Callable[[ClassifierError], None] | None = None,
    url: str = "",
) -> T:
    """``await call()``, retried by ``policy``, all within ``budget`` seconds.

    ``on_retry(error)`` is called before each retry (for the retries metric), which is
    logged as one ``classifier.retry_scheduled`` warning naming ``url`` and the error.
    Raises the last ``ClassifierError``, or ``ClassifierTimeout`` when the budget runs out
    while a call or a backoff is under way.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    retries = 0
    attempts = 0
    last: ClassifierError | None = None

    def backoff(exc: BaseException) -> bool | float:
        nonlocal retries
        if not isinstance(exc, RETRYABLE):
            return False
        remaining = deadline - loop.time()
        retries += 1
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            if exc.retry_after >= remaining:
                return False
            spare = remaining - exc.retry_after
            return exc.retry_after + random.uniform(0, min(policy.backoff_base, spare / 2))
        return policy.lower_bound(retries) < remaining

    async def attempt() -> T:
        nonlocal attempts, last
        attempts += 1
        if attempts > 1 and last is not None:  # a retry really made, and why
            log.warning(
                "classifier.retry_scheduled",
                url=_without_userinfo(url),
                error=f"{last.kind}: {last}",
                attempt=attempts,
            )
            if on_retry is not None:
                on_retry(last)
        try:
            return await call()
        except ClassifierError as exc:
            last = exc
            raise

    timer = asyncio.timeout_at(deadline)
    try:
        async with timer:
            async for trial in stamina.retry_context(
                on=backoff,
                attempts=policy.attempts,
                timeout=budget,
                wait_initial=policy.backoff_base,
                wait_max=policy.backoff_max,
                wait_jitter=policy.backoff_base,
            ):
                with trial:
                    return await attempt()
    except TimeoutError:
        if not timer.expired():
            raise
        after = f"; last error: {last.kind}" if last else ""
        plural = "s" if attempts != 1 else ""
        raise ClassifierTimeout(
            f"no answer within {budget:g}s ({attempts} attempt{plural}{after})"
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
