"""gateway.clientlimit.ClientLimiter: per-address concurrency and rate, exemptions."""

from __future__ import annotations

from gateway.clientlimit import RATE_WINDOW, ClientLimiter, LimitReason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_concurrency_is_per_address_and_a_release_frees_a_slot() -> None:
    limiter = ClientLimiter(max_per_client=2, rate_per_minute=0)
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is LimitReason.CONCURRENCY
    assert limiter.admit("192.0.2.2") is None  # another address is not affected
    limiter.release("192.0.2.1")
    assert limiter.live("192.0.2.1") == 1
    assert limiter.admit("192.0.2.1") is None


def test_the_rate_window_slides_and_refused_attempts_count() -> None:
    clock = Clock()
    limiter = ClientLimiter(max_per_client=0, rate_per_minute=2, clock=clock)
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is LimitReason.RATE
    clock.now += RATE_WINDOW - 1
    assert limiter.admit("192.0.2.1") is LimitReason.RATE  # still hammering: still refused
    clock.now += RATE_WINDOW
    assert limiter.admit("192.0.2.1") is None


def test_exempt_addresses_are_never_limited_nor_counted() -> None:
    limiter = ClientLimiter(
        max_per_client=1, rate_per_minute=1, exempt=lambda ip: ip.startswith("127.")
    )
    for _ in range(10):
        assert limiter.admit("127.0.0.1") is None
    assert limiter.live("127.0.0.1") == 0


def test_quiet_addresses_are_forgotten() -> None:
    """A spray of one-off addresses does not grow the rate table without bound."""
    clock = Clock()
    limiter = ClientLimiter(max_per_client=0, rate_per_minute=5, clock=clock)
    for i in range(1000):
        limiter.admit(f"10.0.{i // 250}.{i % 250}")
        clock.now += 1.0
    assert len(limiter._recent) <= RATE_WINDOW + 1
