"""What TLS and AUTH to the next hop cost through the pool: N messages over P pooled
connections to a local aiosmtpd next hop, plain vs STARTTLS (tls = verify) vs STARTTLS +
AUTH PLAIN, and the handshakes paid (connections opened)::

    .venv/bin/python -m tests.perf.nexthop_tls_bench --messages 2000 --pool 8

Prints one line per mode: messages/s, median and p99 ms per delivery, connections
opened. The next hop (aiosmtpd, in a thread) is the same in each mode, so the difference
is the TLS and AUTH work; with the pool, each connection pays its handshake once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from gateway.deliver._delivery import SmtpDelivery
from gateway.deliver._security import Security
from tests.integration.nexthop_support import make_cert, running_secure_sink

CONTENT = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n"
    + (b"x" * 76 + b"\r\n") * 52
)


async def _run(
    port: int, security: Security, messages: int, pool: int
) -> tuple[float, list[float], int]:
    d = SmtpDelivery(
        "127.0.0.1", port, timeout=30, local_hostname="gw.test", pool_size=pool, security=security
    )
    latencies: list[float] = []
    queue = list(range(messages))

    async def worker() -> None:
        while queue:
            queue.pop()
            start = time.perf_counter()
            result = await d.deliver("a@example.com", ["b@example.com"], CONTENT)
            assert result.delivered, result
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(pool)))
    elapsed = time.perf_counter() - start
    created = d.pool.stats()["created"]
    await d.aclose()
    return messages / elapsed, latencies, created


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=8)
    args = parser.parse_args()
    cert = make_cert(Path(tempfile.mkdtemp()), "localhost")
    os.environ["CMGW_BENCH_PASSWORD"] = "bench"
    modes = {
        "plain": Security(tls="none"),
        "starttls-verify": Security(tls="verify", ca_file=str(cert[0])),
        "starttls-verify+auth": Security(
            tls="verify",
            ca_file=str(cert[0]),
            auth_user="u",
            auth_password_env="CMGW_BENCH_PASSWORD",
        ),
    }
    for name, security in modes.items():
        with running_secure_sink(cert, users={"u": "bench"}) as sink:
            rate, lat, created = asyncio.run(_run(sink.port, security, args.messages, args.pool))
        lat.sort()
        p99 = lat[int(len(lat) * 0.99) - 1]
        median = statistics.median(lat)
        print(
            f"{name:22s} {rate:8.0f} msg/s  median {median:6.2f} ms  p99 {p99:6.2f} ms"
            f"  connections {created}"
        )


if __name__ == "__main__":
    main()
