"""``cm-gateway emulate``: serve the Communications Mining emulator in the foreground.

Prints ``cm-gateway emulator listening on http://HOST:PORT`` on stdout (the real port when
``--port 0``), logs one line per request on stderr (route, status, documents, ms; never a
body or the token), and exits 0 on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from gateway.emulator import EmulatorState, FaultInjector, FaultSettings, KeywordModel, start_server
from gateway.errors import ConfigError
from gateway.logsetup import configure_logging, get_logger
from gateway.ops import run_loop
from gateway.redact import register_secret

__all__ = ["run"]

EXIT_OK = 0
EXIT_CONFIG = 2


def _state(args: argparse.Namespace) -> EmulatorState:
    token = args.token or os.environ.get("REINFER_TOKEN") or None
    register_secret(token)
    settings = FaultSettings(
        fail_rate=args.fail_rate,
        fail_status=str(args.fail_status),
        latency_ms=args.latency_ms,
        retry_after=args.retry_after,
    )
    try:
        faults = FaultInjector(settings, seed=args.seed)
    except ValueError as exc:
        raise ConfigError(str(exc), where="emulate") from None
    return EmulatorState(
        model=KeywordModel.from_path(args.taxonomy),
        token=token,
        faults=faults,
        access_log=True,
    )


async def _serve(state: EmulatorState, host: str, port: int) -> int:
    log = get_logger("cm-gateway.emulator")
    try:
        server = await start_server(state, host, port)
    except OSError as exc:
        print(f"cm-gateway: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"cm-gateway emulator listening on {server.base_url}", flush=True)
        if state.token is None:
            log.warning("no token set (--token, $REINFER_TOKEN): any non-empty Bearer token works")
        log.info(
            "emulator ready",
            model="built-in keyword model, not a real model",
            taxonomy=state.model.taxonomy.source,
            versions=sorted(state.model.taxonomy.versions),
            **state.faults.settings.to_json(),
        )
        await stop.wait()
        log.info("emulator stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
        await server.stop()
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cm-gateway emulate``."""
    configure_logging("info", "auto")
    state = _state(args)
    # uvloop: the emulator shares the machine with the gateway in tests and benchmarks,
    # where the real API would cost the gateway's host nothing.
    return run_loop(_serve(state, args.host, args.port), "uvloop")
