"""One gateway process: the fronts, the pipeline and the metrics server, in steps.

    service = Service(config)           # nothing runs yet
    await service.start()               # build (TLS, AUTH users, pipeline), listen
    await service.wait()                # until SIGTERM/SIGINT
    await service.drain()               # stop accepting, let sessions in DATA finish

``serve(config)`` does all four. Config errors raise ``ConfigError`` from ``start`` before
anything listens. Shutdown: sessions inside DATA get ``shutdown_grace`` seconds, idle
sessions are told ``421 4.3.2``, then the pipeline closes. A second stop signal (more
than ``SAME_STOP_WINDOW`` after the first) cuts the drain short. SIGUSR1 reloads the rule
files, and so does a change of their mtime or size (polled every 2 s): see ``_reload``.
SIGHUP reloads too, unless the process has a controlling terminal: then it is the
terminal's hangup, and stops the gateway (``_process.hangup_stops``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.classify import RemoteClassifier, RemoteThreads, threads_in_process
from gateway.config import Config
from gateway.logsetup import get_logger
from gateway.metrics import GatewayMetrics
from gateway.milter import MilterServer
from gateway.pipeline import MessageDecider, MessageProcessor, build_processor
from gateway.smtp import Authenticator, SmtpServer, build_tls_context

from ._metrics_peers import MetricsPeers, PeerSet
from ._metrics_server import MetricsServer
from ._process import hangup_stops, settle_heap, shutdown_grace, watch_parent
from ._reload import RuleReloader

__all__ = ["SAME_STOP_WINDOW", "Service", "serve", "start_metrics"]

log = get_logger("cm-gateway.serve")

# A stop signal within this many seconds of the first is the same request, not the
# second one that cuts the drain short.
SAME_STOP_WINDOW = 1.0


class Service:
    """The gateway's parts in one process. ``processor`` replaces the configured pipeline
    (tests); ``batcher_socket``: classify through the shared batcher process there;
    ``peers``: this worker's place among the workers, whose metrics a scrape adds up;
    ``parent``: the supervisor's pid (a worker stops, as on SIGTERM, once it is gone)."""

    def __init__(
        self,
        config: Config,
        *,
        processor: MessageProcessor | None = None,
        reuse_port: bool = False,
        batcher_socket: str | None = None,
        peers: PeerSet | None = None,
        parent: int | None = None,
    ) -> None:
        self.config = config
        self._parent = parent
        self.metrics = GatewayMetrics()
        self._peers = MetricsPeers(peers, self.metrics) if peers and config.metrics.listen else None
        self._processor = processor
        self._reuse_port = reuse_port
        self._batcher_socket = batcher_socket
        self._server: SmtpServer | None = None
        self._milter: MilterServer | None = None
        self._draining = False
        self._processor_closer: Callable[[], Awaitable[None]] | None = None
        self._metrics_server: MetricsServer | None = None
        self._reloader: RuleReloader | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._stop_at = 0.0
        self._parent_watch: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """``host:port`` the SMTP front listens on (after ``start``); the milter
        front's address when the SMTP front is off."""
        if self._server is None:
            return self.milter_address
        return self._server.address

    @property
    def milter_address(self) -> str:
        """``host:port`` (or ``unix:/path``) of the milter front (after ``start``)."""
        assert self._milter is not None, "no milter front ([milter] listen)"
        return self._milter.address

    def _build_processor(self) -> MessageProcessor:
        if self._processor is not None:
            return self._processor
        classifier = threads = None
        if self._batcher_socket is not None:
            # The batcher process keeps the API's own deadline; this one only covers a
            # batcher that stopped answering.
            classifier = RemoteClassifier(
                self._batcher_socket, deadline=self.config.classifier.deadline, metrics=self.metrics
            )
            if threads_in_process(self.config):
                threads = RemoteThreads(classifier)  # one memory for every worker
        return build_processor(
            self.config, classifier=classifier, metrics=self.metrics, threads=threads
        )

    async def start(self) -> None:
        """Build everything, then listen; raises ``ConfigError`` before listening."""
        smtp = self.config.smtp
        tls = (
            build_tls_context(
                smtp.tls_cert_file,
                smtp.tls_key_file,
                min_version=smtp.tls_min_version,
                ciphers=smtp.tls_ciphers,
            )
            if smtp.tls_cert_file
            else None
        )
        authenticator = (
            Authenticator.from_file(smtp.auth_users_file) if smtp.auth_users_file else None
        )
        if authenticator is not None and len(authenticator) == 0:
            log.warning("auth_users_file_empty", file=smtp.auth_users_file)
        processor = self._build_processor()
        try:
            if smtp.listen:
                server = SmtpServer(
                    smtp,
                    processor,
                    authenticator=authenticator,
                    tls_context=tls,
                    reuse_port=self._reuse_port,
                )
                await server.start()
                self._server = server
            if self.config.milter.listen:
                self._milter = await self._start_milter(processor)
        except BaseException:
            if self._server is not None:
                await self._server.aclose(grace=0)
            closer = getattr(processor, "aclose", None)
            if closer is not None:
                await closer()
            raise
        self._processor_closer = getattr(processor, "aclose", None)
        self.metrics.track_sessions(self._live_sessions)
        if self._peers is not None:
            await self._peers.start()
        self._metrics_server = await start_metrics(
            self.config,
            self.metrics,
            reuse_port=self._reuse_port,
            draining=lambda: self._draining,
            render=self._peers.render if self._peers is not None else None,
        )
        settle_heap()
        self._install_signals(processor)
        if self._parent is not None:
            watch = watch_parent(self._parent, self._parent_gone, self._stop)
            self._parent_watch = asyncio.create_task(watch)

    def _parent_gone(self) -> None:
        # The supervisor was killed (SIGKILL, the OOM killer): drain as on SIGTERM rather
        # than serve the port on, unsupervised, beside the gateway started in its place.
        log.error("worker_parent_gone", parent=self._parent)
        self._on_stop(signal.SIGTERM)

    async def _start_milter(self, processor: MessageProcessor) -> MilterServer:
        if not isinstance(processor, MessageDecider):
            raise TypeError("the milter front needs a processor with decide()")
        milter = MilterServer(
            self.config.milter.listen,
            processor,
            trusted_networks=self.config.smtp.trusted_networks,
            # One byte over classify_max_size: the pipeline then skips it as too large.
            buffer_limit=self.config.classifier.classify_max_size + 1,
            timeout=self.config.milter.timeout,
            reuse_port=self._reuse_port,
        )
        await milter.start()
        return milter

    def _live_sessions(self) -> int:
        smtp = len(self._server.tracker.live) if self._server is not None else 0
        return smtp + (len(self._milter.sessions) if self._milter is not None else 0)

    def _install_signals(self, processor: Any) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop, signum)
        reload_signals = [signal.SIGUSR1]
        if hangup_stops():
            loop.add_signal_handler(signal.SIGHUP, self._on_stop, signal.SIGHUP)
        else:
            reload_signals.append(signal.SIGHUP)
        if hasattr(processor, "reload_rules"):
            self._reloader = RuleReloader(processor)
            for signum in reload_signals:
                trigger = signal.Signals(signum).name.lower()
                loop.add_signal_handler(signum, self._reloader.reload, trigger)
            self._watcher = asyncio.create_task(self._reloader.watch())
        else:  # a processor without rules (tests)
            for signum in reload_signals:
                loop.add_signal_handler(
                    signum, lambda: log.info("reload_ignored", reason="processor has no rules")
                )

    def _on_stop(self, signum: int) -> None:
        loop = asyncio.get_running_loop()
        name = signal.Signals(signum).name
        if self._stop.is_set():
            if loop.time() - self._stop_at < SAME_STOP_WINDOW:
                # With workers, a terminal's Ctrl-C (or a group kill) reaches a worker
                # both from the terminal and forwarded by the parent: one request.
                log.info("shutdown_signal_repeated", signal=name)
                return
            # A second request while draining: stop waiting for sessions in DATA.
            log.warning("shutdown_forced", signal=name)
            if self._server is not None:
                self._server.abort_drain()
            return
        log.info("shutdown_requested", signal=name)
        self._stop_at = loop.time()
        self._stop.set()

    def stop(self) -> None:
        """Ask ``wait`` to return, as SIGTERM does."""
        self._on_stop(signal.SIGTERM)

    async def wait(self) -> None:
        """Until a stop signal (or ``stop()``)."""
        await self._stop.wait()

    async def drain(self) -> None:
        """Stop accepting, let sessions in DATA finish, close the pipeline and metrics."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._parent_watch is not None:
            self._parent_watch.cancel()
        loop = asyncio.get_running_loop()
        self._draining = True
        grace = shutdown_grace(self.config)
        try:
            # The milter front first: the SMTP front's aclose also closes the pipeline.
            if self._milter is not None:
                await self._milter.aclose(grace=grace)
            if self._server is not None:
                await self._server.aclose(grace=grace)
            elif self._processor_closer is not None:
                await self._processor_closer()
        finally:
            # Kept until here so that a second signal during the drain can cut it short.
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
            if self._metrics_server is not None:
                await self._metrics_server.aclose()
            if self._peers is not None:
                await self._peers.aclose()


async def serve(
    config: Config,
    *,
    processor: MessageProcessor | None = None,
    announce: Callable[[str], None] | None = None,
    reuse_port: bool = False,
    batcher_socket: str | None = None,
    peers: PeerSet | None = None,
    parent: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status. ``announce(address)`` is
    called once the front listens."""
    service = Service(
        config,
        processor=processor,
        reuse_port=reuse_port,
        batcher_socket=batcher_socket,
        peers=peers,
        parent=parent,
    )
    await service.start()
    if announce is not None:
        announce(service.address)
    try:
        await service.wait()
    finally:
        await service.drain()
    return 0


async def start_metrics(
    config: Config,
    metrics: GatewayMetrics,
    *,
    reuse_port: bool,
    draining: Callable[[], bool] | None = None,
    render: Callable[[], Awaitable[bytes]] | None = None,
) -> MetricsServer | None:
    """The ``[metrics] listen`` server, or None when disabled or when it cannot listen
    (logged: mail keeps flowing without metrics). ``draining`` true: /readyz is 503;
    ``render``: /metrics's body (with workers, all of theirs)."""
    if not config.metrics.listen:
        return None
    metrics_server = MetricsServer(
        config, metrics, reuse_port=reuse_port, draining=draining, render=render
    )
    try:
        await metrics_server.start()
    except OSError as exc:
        log.error("metrics_listen_failed", listen=config.metrics.listen, error=str(exc))
        return None
    return metrics_server
