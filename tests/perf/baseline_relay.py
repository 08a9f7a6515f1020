"""The throughput benchmark's baseline: a plain aiosmtpd relay that does nothing else.

It has the gateway's store-and-forward semantics (the reply to DATA comes only after the
next hop accepted the message) and none of its work: no parsing, no classification, no
rules, no logging, and a NEW downstream connection (aiosmtplib) for every message::

    python -m tests.perf.baseline_relay --listen 127.0.0.1:0 --next-hop 127.0.0.1:2526

With ``--hold-ms N`` it waits N ms before relaying each message, and does nothing else:
the "hold relay". S closed-loop sessions carry at most S / (N ms) messages a second
through any relay that waits that long per message (Little's law); the hold relay shows
how near a relay that does no other work gets to that bound on this machine, in the
same run. With many sessions its own CPU bounds it first, as it bounds the baseline.

It prints ``baseline listening on HOST:PORT`` once it accepts connections and runs until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["PlainRelay", "main", "serve"]


class PlainRelay:
    """aiosmtpd handler: relay each message over a fresh connection, answer its reply."""

    def __init__(self, host: str, port: int, *, timeout: float = 60.0, hold_s: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.hold_s = hold_s

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Forward the message (after ``hold_s``); 250 once the next hop has it, else 451."""
        content = envelope.original_content or b""
        if self.hold_s > 0:
            await asyncio.sleep(self.hold_s)
        try:
            async with aiosmtplib.SMTP(
                hostname=self.host, port=self.port, timeout=self.timeout, start_tls=False
            ) as client:
                await client.sendmail(envelope.mail_from or "", list(envelope.rcpt_tos), content)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return "451 4.4.1 Next hop unavailable"
        return "250 2.0.0 Ok: relayed"

    async def handle_exception(self, error: Exception) -> str:
        """Never aiosmtpd's default 500 with the exception text."""
        return "451 4.3.0 Internal error"


async def serve(listen: str, next_hop: str, hold_ms: float = 0.0) -> None:
    """Relay until SIGTERM/SIGINT."""
    host, _, port = listen.rpartition(":")
    hop_host, _, hop_port = next_hop.rpartition(":")
    loop = asyncio.get_running_loop()
    factory = functools.partial(
        SMTP,
        PlainRelay(hop_host, int(hop_port), hold_s=hold_ms / 1000),
        hostname="baseline.example",  # else aiosmtpd calls getfqdn() per connection
        ident="baseline relay",
        decode_data=False,
        enable_SMTPUTF8=True,
        data_size_limit=40 * 2**20,
        loop=loop,
    )
    server = await loop.create_server(factory, host, int(port), backlog=1024)
    bound = server.sockets[0].getsockname()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"baseline listening on {bound[0]}:{bound[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--next-hop", required=True)
    parser.add_argument("--hold-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.next_hop, args.hold_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
