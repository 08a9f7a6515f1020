"""A next hop that tempfails the first attempt of a share of messages (the billing test).

smtp-sink can only tempfail every DATA (``-r .``), so this small aiosmtpd sink answers
``451 4.3.0`` to the FIRST delivery of each message whose Message-ID hashes into the
``--share`` (deterministic: a sha256 of the Message-ID), and 250 to everything else,
retries included. It keeps nothing but the set of Message-IDs it already tempfailed::

    python -m tests.perf.tempfail_sink --listen 127.0.0.1:0 --share 0.2

prints ``sink listening on HOST:PORT`` and runs until SIGTERM/SIGINT.

Not ``gateway.testing.NextHopSink``: the benchmarks need a separate process (the sink's
CPU must not be measured as the gateway's) that keeps nothing per message, where the
test sink records every message it accepts (a throughput run sends tens of thousands).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import re
import signal
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["TempfailSink", "main", "tempfails_first_attempt"]

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)


def tempfails_first_attempt(message_id: bytes, share: float) -> bool:
    """Whether the message with this Message-ID is one of the ``share`` to tempfail."""
    digest = hashlib.sha256(message_id.strip()).digest()
    return int.from_bytes(digest[:4], "big") < share * 2**32


class TempfailSink:
    """aiosmtpd handler: 451 on the first attempt of the chosen share, else 250."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.failed_once: set[bytes] = set()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Accept, or tempfail a first attempt."""
        content = envelope.original_content or b""
        head = content.split(b"\r\n\r\n", 1)[0]
        match = _MESSAGE_ID.search(head)
        message_id = match.group(1) if match else b""
        if (
            message_id
            and message_id not in self.failed_once
            and tempfails_first_attempt(message_id, self.share)
        ):
            self.failed_once.add(message_id)
            return "451 4.3.0 Try again later (first attempt)"
        return "250 2.0.0 Ok: sunk"


async def serve(listen: str, share: float) -> None:
    """Sink until SIGTERM/SIGINT."""
    host, _, port = listen.rpartition(":")
    loop = asyncio.get_running_loop()
    factory = functools.partial(
        SMTP,
        TempfailSink(share),
        hostname="sink.example",
        ident="tempfail sink",
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
    print(f"sink listening on {bound[0]}:{bound[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="SMTP sink that tempfails first attempts")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--share", type=float, default=0.2)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
