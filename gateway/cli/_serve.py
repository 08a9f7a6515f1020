"""``cm-gateway serve``: run the SMTP gateway until SIGTERM/SIGINT.

Start-up: load the config, configure logging, register secrets, build the TLS context
and the AUTH users (config errors exit 2 before anything listens), build the pipeline
(``gateway.pipeline._pipeline.build_processor``), listen, and print one line
``cm-gateway listening on HOST:PORT`` to stdout (plus how to send a test mail when running
the embedded default).

Shutdown (SIGTERM or SIGINT): stop accepting, let sessions inside DATA finish (at most
``min(30 s, smtp.timeout)``), tell idle sessions ``421 4.3.2``, close the pipeline, exit 0.
SIGHUP reloads the rule files, and so does a change of their mtime or size (polled every
2 s): see ``gateway.ops._reload``; a file that does not validate keeps the old rules.

``[smtp] workers = N`` (N > 1): see ``gateway.ops._supervisor``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.config import Config, load_config, parse_listen
from gateway.logsetup import configure_logging, get_logger
from gateway.ops import _eventloop as eventloop
from gateway.redact import register_secret

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
    from gateway.ops._metrics_server import MetricsServer

__all__ = ["register_secrets", "run", "serve", "shutdown_grace"]

log = get_logger("cm-gateway.serve")

# A stop signal within this many seconds of the first is the same request, not the
# second one that cuts the drain short.
SAME_STOP_WINDOW = 1.0


def shutdown_grace(config: Config) -> float:
    """How long sessions inside DATA get to finish at shutdown."""
    return min(30.0, config.smtp.timeout)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cm-gateway serve``."""
    config = load_config(args.config)
    configure_logging(config.log.level, config.log.format)
    register_secrets(config)
    if config.smtp.workers > 1:
        from gateway.ops._supervisor import run_workers

        return run_workers(config, args.config)
    return eventloop.run(serve(config, embedded=args.config is None), config.smtp.event_loop)


def register_secrets(config: Config) -> None:
    register_secret(config.classifier.token())
    register_secret(config.classifier.secret())


async def serve(
    config: Config,
    *,
    embedded: bool = False,
    processor: Any = None,
    out: TextIO | None = None,
    reuse_port: bool = False,
    batcher_socket: str | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status. ``processor`` replaces the
    configured pipeline (tests); ``batcher_socket``: classify through the shared batcher
    process listening there."""
    # Imported here so that `cm-gateway config check` and friends stay light.
    from gateway.metrics import GatewayMetrics
    from gateway.smtp._auth import Authenticator
    from gateway.smtp._server import SmtpServer, build_tls_context

    out = out or sys.stdout
    smtp = config.smtp
    tls = build_tls_context(smtp.tls_cert_file, smtp.tls_key_file) if smtp.tls_cert_file else None
    authenticator = Authenticator.from_file(smtp.auth_users_file) if smtp.auth_users_file else None
    if authenticator is not None and len(authenticator) == 0:
        log.warning("auth_users_file_empty", file=smtp.auth_users_file)
    metrics = GatewayMetrics()
    if processor is None:
        from gateway.pipeline._pipeline import build_processor

        classifier = None
        if batcher_socket is not None:
            from gateway.classify._batch_client import RemoteClassifier

            # The batcher process keeps the API's own deadline; this one only covers a
            # batcher that stopped answering (it also waits up to max_wait_ms to send).
            deadline = config.classifier.timeout + config.classifier.max_wait_ms / 1000 + 1.0
            classifier = RemoteClassifier(batcher_socket, deadline=deadline, metrics=metrics)
        processor = build_processor(config, classifier=classifier, metrics=metrics)
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
    stop_at = 0.0

    def on_stop(signum: int) -> None:
        nonlocal stop_at
        name = signal.Signals(signum).name
        if stop.is_set():
            if loop.time() - stop_at < SAME_STOP_WINDOW:
                # With workers, a terminal's Ctrl-C (or a group kill) reaches a worker
                # both from the terminal and forwarded by the parent: one request.
                log.info("shutdown_signal_repeated", signal=name)
                return
            # A second request while draining: stop waiting for sessions in DATA.
            log.warning("shutdown_forced", signal=name)
            server.abort_drain()
            return
        log.info("shutdown_requested", signal=name)
        stop_at = loop.time()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    from gateway.ops._reload import RuleReloader

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
    from gateway.ops._metrics_server import MetricsServer

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
