"""``cm-gateway serve``: run the SMTP gateway until SIGTERM/SIGINT.

Start-up: load the config, configure logging, register secrets, build the TLS context
and the AUTH users (config errors exit 2 before anything listens), build the pipeline
(``gateway.pipeline.build_processor``), listen, and print one line
``cm-gateway listening on HOST:PORT`` to stdout (plus how to send a test mail when running
the embedded default).

Shutdown (SIGTERM or SIGINT): stop accepting, let sessions inside DATA finish (at most
``min(30 s, smtp.timeout)``), tell idle sessions ``421 4.3.2``, close the pipeline, exit 0.
SIGHUP reloads the rule files, and so does a change of their mtime or size (polled every
2 s): see ``gateway.reload``; a file that does not validate keeps the old rules.

``[smtp] workers = N`` (N > 1) runs N worker processes (multiprocessing, spawn) that share
the listening port with SO_REUSEPORT; the parent only forwards signals (SIGHUP too) and waits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import eventloop
from .config import Config, load_config, parse_listen
from .errors import ConfigError
from .logsetup import configure_logging, get_logger
from .redact import register_secret

if TYPE_CHECKING:
    from .metrics import GatewayMetrics, MetricsServer

__all__ = ["run", "serve", "shutdown_grace"]

log = get_logger("cm-gateway.serve")


def shutdown_grace(config: Config) -> float:
    """How long sessions inside DATA get to finish at shutdown."""
    return min(30.0, config.smtp.timeout)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cm-gateway serve``."""
    config = load_config(args.config)
    configure_logging(config.log.level, config.log.format)
    _register_secrets(config)
    if config.smtp.workers > 1:
        return _run_workers(config, args.config)
    return eventloop.run(serve(config, embedded=args.config is None), config.smtp.event_loop)


def _register_secrets(config: Config) -> None:
    register_secret(config.classifier.token())
    register_secret(config.classifier.secret())


async def serve(
    config: Config,
    *,
    embedded: bool = False,
    processor: Any = None,
    out: TextIO | None = None,
    reuse_port: bool = False,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status. ``processor`` replaces the
    configured pipeline (tests)."""
    # Imported here so that `cm-gateway config check` and friends stay light.
    from .auth import Authenticator
    from .metrics import GatewayMetrics
    from .server import SmtpServer, build_tls_context

    out = out or sys.stdout
    smtp = config.smtp
    tls = build_tls_context(smtp.tls_cert_file, smtp.tls_key_file) if smtp.tls_cert_file else None
    authenticator = Authenticator.from_file(smtp.auth_users_file) if smtp.auth_users_file else None
    if authenticator is not None and len(authenticator) == 0:
        log.warning("auth_users_file_empty", file=smtp.auth_users_file)
    metrics = GatewayMetrics()
    if processor is None:
        from .pipeline import build_processor

        processor = build_processor(config, metrics=metrics)
        if inspect.isawaitable(processor):
            processor = await processor
    server = SmtpServer(
        smtp, processor, authenticator=authenticator, tls_context=tls, reuse_port=reuse_port
    )
    try:
        await server.start()
    except BaseException:
        closer = getattr(processor, "aclose", None)
        if closer is not None:
            await closer()
        raise
    metrics.track_sessions(lambda: len(server.tracker.live))
    metrics_server = await _start_metrics(
        config, metrics, reuse_port=reuse_port, draining=lambda: server.tracker.draining
    )
    # What start-up built (modules, schemas, rules, clients) lives as long as the
    # process: frozen out of the collector's sight, a full collection no longer walks it.
    # Unfrozen, each one held the loop for 100-170 ms here, stalling every session.
    gc.collect()
    gc.freeze()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stop(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            # A second request while draining: stop waiting for sessions in DATA.
            log.warning("shutdown_forced", signal=name)
            server.abort_drain()
            return
        log.info("shutdown_requested", signal=name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    from .reload import RuleReloader

    reloader = RuleReloader(processor) if hasattr(processor, "reload_rules") else None
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, reloader.reload)
    else:  # a processor without rules (tests)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.info("sighup_ignored", reason="processor has no rules")
        )
    watcher = asyncio.create_task(reloader.watch()) if reloader is not None else None
    print(f"cm-gateway listening on {server.address}", file=out, flush=True)
    if embedded:
        print(_how_to(config, server.address), file=out, flush=True)
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        try:
            await server.aclose(grace=shutdown_grace(config))
        finally:
            # Kept until here so that a second signal during the drain can cut it short.
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if metrics_server is not None:
                await metrics_server.aclose()
    return 0


async def _start_metrics(
    config: Config,
    metrics: GatewayMetrics,
    *,
    reuse_port: bool,
    draining: Callable[[], bool] | None = None,
) -> MetricsServer | None:
    """The ``[metrics] listen`` server, or None when disabled or when it cannot listen
    (logged: mail keeps flowing without metrics). ``draining`` true: /readyz is 503."""
    if not config.metrics.listen:
        return None
    from .metrics import MetricsServer

    metrics_server = MetricsServer(config, metrics, reuse_port=reuse_port, draining=draining)
    try:
        await metrics_server.start()
    except OSError as exc:
        log.error("metrics_listen_failed", listen=config.metrics.listen, error=str(exc))
        return None
    return metrics_server


def _how_to(config: Config, address: str) -> str:
    host, port = parse_listen(address)
    maildir = config.downstream.maildir_path
    where = (
        f"Routed mail lands in the Maildir {(Path.cwd() / maildir).resolve()}/new"
        if maildir is not None
        else f"Routed mail goes to {config.downstream.url}"
    )
    body = "Please pay invoice INV-2041 (EUR 1,200.00) by Friday, it is overdue."
    return "\n".join(
        [
            "Embedded default: the built-in keyword model (NOT a real Communications Mining"
            " model), the shipped rules " + ", ".join(config.rules.files) + ".",
            "Send a test mail:",
            f"  swaks --server {host}:{port} --from alice@example.net --to triage@example.com"
            f" --header 'Subject: Invoice INV-2041 overdue' --body '{body}'",
            f"  python3 -c \"import smtplib; smtplib.SMTP('{host}', {port}).sendmail("
            f"'alice@example.net', ['triage@example.com'], "
            f"'Subject: Invoice INV-2041 overdue\\n\\n{body}\\n')\"",
            where,
            "Stop with Ctrl-C.",
        ]
    )


# -- workers > 1 -----------------------------------------------------------------------


def _worker_main(config_path: str | None, index: int) -> None:
    """One worker process (spawned): the same config, the shared port (SO_REUSEPORT)."""
    config = load_config(config_path)
    configure_logging(config.log.level, config.log.format)
    _register_secrets(config)
    import structlog

    structlog.contextvars.bind_contextvars(worker=index)
    # The parent prints the banner; workers stay quiet on stdout.
    with open(os.devnull, "w", encoding="utf-8") as devnull:
        try:
            status = eventloop.run(
                serve(config, out=devnull, reuse_port=True), config.smtp.event_loop
            )
        except ConfigError as exc:
            print(f"cm-gateway: worker {index}: {exc}", file=sys.stderr)
            status = 2
    sys.exit(status)


def _run_workers(config: Config, config_path: str | None) -> int:
    if parse_listen(config.smtp.listen)[1] == 0:
        raise ConfigError("workers > 1 needs a fixed port (not 0)", where="smtp.listen")
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Windows
        raise ConfigError("workers > 1 needs SO_REUSEPORT (Linux, BSD)", where="smtp.workers")
    # Fail here, once, with exit 2, rather than in every worker.
    from .auth import load_users
    from .server import build_tls_context

    if config.smtp.tls_cert_file:
        build_tls_context(config.smtp.tls_cert_file, config.smtp.tls_key_file)
    if config.smtp.auth_users_file:
        load_users(config.smtp.auth_users_file)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(config_path, i), name=f"cm-gateway-worker-{i}")
        for i in range(config.smtp.workers)
    ]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for proc in procs:
        proc.start()
    # Set after the start: the workers inherit SIG_IGN (not a handler) until they listen.

    def forward_reload(signum: int, _frame: object) -> None:
        for proc in procs:
            if not stopping and proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGHUP, forward_reload)
    log.info("workers_started", workers=len(procs), listen=config.smtp.listen)
    print(f"cm-gateway listening on {config.smtp.listen} ({len(procs)} workers)", flush=True)
    status = 0
    while procs:
        for proc in list(procs):
            proc.join(timeout=0.5)
            if proc.exitcode is None:
                continue
            procs.remove(proc)
            # A worker still starting up when we forward SIGTERM dies of it before its
            # handler is installed: it held no session, so that is a clean stop too.
            clean = (0, -signal.SIGTERM, -signal.SIGINT) if stopping else (0,)
            if proc.exitcode not in clean:
                status = 1
            if not stopping:
                # A worker died on its own: stop the rest rather than run degraded.
                log.error("worker_exited", worker=proc.name, exitcode=proc.exitcode)
                forward(signal.SIGTERM, None)
    return status
