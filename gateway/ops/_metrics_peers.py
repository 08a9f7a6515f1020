"""One ``/metrics`` for all workers: whichever worker takes a scrape adds up the others.

    peers = MetricsPeers(PeerSet(directory, index, count), metrics)
    await peers.start()              # answer the siblings at <directory>/metrics-<index>.sock
    body = await peers.render()      # this worker's samples plus every sibling's, merged

With ``[smtp] workers > 1`` the workers share the metrics port (SO_REUSEPORT), so the kernel
hands a scrape to any of them. Each worker also listens on a Unix socket in the
supervisor's private directory and answers every connection with its own samples (JSON,
then it hangs up). The worker that took the scrape asks its siblings at once, each within
``PEER_TIMEOUT``, and merges:

- counters and histograms (buckets, ``_count``, ``_sum``) add up; ``_created`` keeps the
  earliest;
- gauges add up (open sessions, pooled connections: each worker has its own), except those
  that state one thing the workers share or follow (``MAX_GAUGES``: the circuit's state,
  what the adaptive batcher learned), which keep the largest;
- every worker reports ``cm_gateway_workers_scraped`` 1, so the sum says how many
  workers' samples the answer holds (``cm_gateway_workers``: how many there are). A worker
  that does not answer in time (stopping, or stuck) is left out of that scrape, never
  waited for beyond the timeout; an alert on ``cm_gateway_workers_scraped <
  cm_gateway_workers`` catches it.

prometheus-client's own multiprocess mode is not used: it keeps files per process and
cannot carry the gauges read by a callback at scrape time (open sessions, the pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway.logsetup import get_logger
from gateway.metrics import GatewayMetrics

__all__ = ["MAX_GAUGES", "PEER_TIMEOUT", "MetricsPeers", "PeerSet", "merge_samples"]

PEER_TIMEOUT = 2.0
# Gauges every worker reports alike (they follow the shared batcher's circuit and
# learned figures) or whose sum would mean nothing: the largest one stands for all.
MAX_GAUGES = frozenset(
    {
        "cm_gateway_circuit_state",
        "cm_gateway_batcher_latency_seconds",
        "cm_gateway_batcher_target_documents",
        "cm_gateway_workers",
    }
)

_log = get_logger("cm-gateway.metrics")

# One family as it travels between workers: name, type, help, [[sample, labels, value]].
Family = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PeerSet:
    """Where the workers' metrics sockets are, which one is this worker, how many."""

    directory: str
    index: int
    count: int

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"metrics-{index}.sock")


def snapshot(registry: CollectorRegistry) -> list[Family]:
    """The registry's samples, JSON-ready (the gauges read by callbacks read now)."""
    return [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
        for family in registry.collect()
    ]


def merge_samples(snapshots: Iterable[list[Family]]) -> list[Family]:
    """The families of several workers as one (module docstring: how each kind merges)."""
    merged: dict[str, Family] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in snapshots:
        for family in families:
            name = family["name"]
            if name not in merged:
                merged[name] = {k: family[k] for k in ("name", "type", "help")}
                values[name] = {}
            keep_max = family["type"] == "gauge" and name in MAX_GAUGES
            series = values[name]
            for sample, labels, value in family["samples"]:
                key = (sample, tuple(sorted(labels.items())))
                old = series.get(key)
                if old is None:
                    series[key] = float(value)
                elif sample.endswith("_created"):
                    series[key] = min(old, float(value))
                elif keep_max:
                    series[key] = max(old, float(value))
                else:
                    series[key] = old + float(value)
    for name, family in merged.items():
        family["samples"] = [
            [sample, dict(labels), value] for (sample, labels), value in values[name].items()
        ]
    return list(merged.values())


class _Families(Collector):
    """A collector that yields fixed families (a merged scrape)."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            metric = Metric(family["name"], family["help"], family["type"])
            for sample, labels, value in family["samples"]:
                metric.add_sample(sample, labels, value)
            yield metric


def render_families(families: list[Family]) -> bytes:
    """The text exposition format of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))  # a Collector: collect() is all it needs
    return generate_latest(registry)


class MetricsPeers:
    """This worker's side of the merged ``/metrics`` (module docstring)."""

    def __init__(self, peers: PeerSet, metrics: GatewayMetrics, *, timeout: float = PEER_TIMEOUT):
        self.peers = peers
        self.metrics = metrics
        self.timeout = timeout
        metrics.workers.set(peers.count)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Answer the siblings (the socket path is this worker's; a stale one is replaced)."""
        path = self.peers.path(self.peers.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._answer, path)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(snapshot(self.metrics.registry)).encode())
            await writer.drain()
        except OSError:  # the asking worker gave up: nothing to tell
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _ask(self, index: int) -> list[Family] | None:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(self.peers.path(index))
                try:
                    data = await reader.read()  # the sibling hangs up after its answer
                finally:
                    writer.close()
            families = json.loads(data)
        except (OSError, TimeoutError, ValueError) as exc:
            _log.warning("metrics_worker_silent", worker=index, error=type(exc).__name__)
            return None
        return families if isinstance(families, list) else None

    async def render(self) -> bytes:
        """Every answering worker's samples merged, in the text exposition format."""
        others = [i for i in range(self.peers.count) if i != self.peers.index]
        answers = await asyncio.gather(*(self._ask(i) for i in others))
        snapshots = [snapshot(self.metrics.registry)]
        snapshots += [a for a in answers if a is not None]
        return render_families(merge_samples(snapshots))
