"""The ``[metrics] listen`` endpoints: /metrics, /healthz, /readyz.

    MetricsServer(config, metrics)   aiohttp, serving ``metrics.GatewayMetrics`` (or, with
                                     workers, every worker's: ``render``)
    Readiness(config)                the /readyz probes, cached

``/healthz`` answers 200 ``ok`` while the process runs. ``/readyz`` answers 503
``draining`` from the moment a shutdown starts (so a load balancer stops sending while
the sessions in DATA finish); otherwise 200 when every next hop is reachable
(``downstream`` and each ``route:NAME``; see ``deliver.probe_next_hop``) and the classifier is
reachable (a TCP connect to its API host) or does not need to be (``on_error =
"deliver"``, or the in-process emulator); otherwise 503. Both answer a JSON body naming
each check. Probe results are cached for ``PROBE_TTL`` seconds so that a burst of scrapes
does not hammer the next hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.config import Config, NextHopConfig, parse_listen
from gateway.deliver import probe_next_hop
from gateway.logsetup import get_logger
from gateway.metrics import GatewayMetrics

__all__ = ["PROBE_TIMEOUT", "PROBE_TTL", "Check", "MetricsServer", "Readiness"]

PROBE_TTL = 5.0
PROBE_TIMEOUT = 3.0

_log = get_logger("cm-gateway.metrics")


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str


class Readiness:
    """The ``/readyz`` checks, cached for ``ttl`` seconds."""

    def __init__(self, config: Config, *, ttl: float = PROBE_TTL) -> None:
        self.config = config
        self.ttl = ttl
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, Check]] | None = None

    async def checks(self) -> dict[str, Check]:
        """Every check by name; probes run at most once per ``ttl`` (concurrent callers
        share one run)."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
            hops, classifier = await asyncio.gather(self._next_hops(), self._classifier())
            result = {**hops, "classifier": classifier}
            self._cached = (time.monotonic(), result)
            return result

    async def _next_hops(self) -> dict[str, Check]:
        # "downstream" is [downstream]; each route is "route:NAME", probed side by side.
        hops: dict[str, NextHopConfig] = {"downstream": self.config.downstream}
        hops.update({f"route:{n}": h for n, h in self.config.downstream.routes.items()})
        results = await asyncio.gather(
            *(
                probe_next_hop(hop, local_hostname=self.config.smtp.hostname, timeout=PROBE_TIMEOUT)
                for hop in hops.values()
            )
        )
        return {name: Check(ok, detail) for name, (ok, detail) in zip(hops, results, strict=True)}

    async def _classifier(self) -> Check:
        settings = self.config.classifier
        if settings.provider == "emulator":
            return Check(True, "in-process emulator")
        if settings.on_error == "deliver":
            return Check(True, "not probed: on_error = deliver")
        url = settings.url if settings.provider == "custom" else settings.base_url
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            return Check(False, f"{host}:{port} unreachable: {type(exc).__name__}")
        return Check(True, f"{host}:{port} reachable")


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``[metrics] listen``."""

    def __init__(
        self,
        config: Config,
        metrics: GatewayMetrics,
        *,
        readiness: Readiness | None = None,
        reuse_port: bool = False,
        draining: Callable[[], bool] | None = None,
        render: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.render = render
        self.readiness = readiness or Readiness(config)
        self.reuse_port = reuse_port
        self.draining = draining
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen (raises ``OSError`` when the address is taken)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = parse_listen(self.config.metrics.listen)
        site = web.TCPSite(runner, host, port, reuse_port=self.reuse_port or None)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        _log.info("metrics_listening", address=self.address)

    @property
    def address(self) -> str:
        """``host:port`` actually bound (useful with port 0)."""
        assert self._runner is not None, "not started"
        host, port = self._runner.addresses[0][:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        # With workers, ``render`` adds up every worker's samples (ops._metrics_peers).
        body = await self.render() if self.render is not None else self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.draining is not None and self.draining():
            # Shutting down: a load balancer must stop sending before the port closes.
            body = {
                "ready": False,
                "failed": ["draining"],
                "checks": {"draining": {"ok": False, "detail": "shutting down"}},
            }
            return web.json_response(body, status=503)
        checks = await self.readiness.checks()
        failed = [name for name, check in checks.items() if not check.ok]
        body = {
            "ready": not failed,
            "failed": failed,
            "checks": {n: {"ok": c.ok, "detail": c.detail} for n, c in checks.items()},
        }
        return web.json_response(body, status=503 if failed else 200)
