"""With workers, the worker that takes a scrape adds up its siblings' samples
(``gateway.ops._metrics_peers``): merged as Prometheus means them, over real Unix sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from gateway.ops._metrics_peers import MetricsPeers, PeerSet


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _worker(messages: int, sessions: int, circuit: int, latency: float) -> GatewayMetrics:
    metrics = GatewayMetrics()
    for _ in range(messages):
        metrics.observe_message({"recipients": 1, "total_ms": 150, "rules_hit": ["r"]}, 250)
    metrics.track_sessions(lambda: sessions)
    metrics.circuit_changed("live", "open" if circuit else "closed", circuit, None)
    metrics.batcher_learned(latency, 20)
    return metrics


async def _scrape(tmp_path: Path, workers: list[GatewayMetrics], count: int) -> bytes:
    peers = [MetricsPeers(PeerSet(str(tmp_path), i, count), m) for i, m in enumerate(workers)]
    for peer in peers:
        await peer.start()
    try:
        return await peers[0].render()
    finally:
        for peer in peers:
            await peer.aclose()


def test_a_scrape_adds_up_counters_histograms_and_session_gauges_of_every_worker(
    tmp_path: Path,
) -> None:
    workers = [_worker(3, 2, 0, 0.1), _worker(5, 7, 1, 0.3)]
    got = _samples(asyncio.run(_scrape(tmp_path, workers, 2)))
    assert got[("cm_gateway_messages_total", (("outcome", "delivered"),))] == 8
    assert got[("cm_gateway_rule_hits_total", (("rule", "r"),))] == 8
    stage = (("stage", "total"),)
    assert got[("cm_gateway_stage_seconds_count", stage)] == 8
    assert abs(got[("cm_gateway_stage_seconds_sum", stage)] - 8 * 0.15) < 1e-9
    assert got[("cm_gateway_stage_seconds_bucket", (("le", "0.25"), *stage))] == 8
    assert got[("cm_gateway_stage_seconds_bucket", (("le", "0.1"), *stage))] == 0
    assert got[("cm_gateway_sessions_in_flight", ())] == 9
    # What the workers share or follow keeps the largest, not a sum of copies.
    assert got[("cm_gateway_circuit_state", (("classifier", "live"),))] == 1
    assert got[("cm_gateway_batcher_latency_seconds", ())] == 0.3
    assert got[("cm_gateway_batcher_target_documents", ())] == 20
    assert got[("cm_gateway_workers", ())] == 2
    assert got[("cm_gateway_workers_scraped", ())] == 2
    # A counter's creation time is the earliest worker's, not a sum of timestamps.
    created = got[("cm_gateway_messages_created", (("outcome", "delivered"),))]
    assert created <= time.time() < created + 3600


def test_a_worker_that_does_not_answer_is_left_out_and_named_by_the_scraped_count(
    tmp_path: Path,
) -> None:
    # Three workers configured, the third never listens (stopped, or not started yet).
    workers = [_worker(3, 1, 0, 0.1), _worker(4, 1, 0, 0.1)]
    started = time.monotonic()
    got = _samples(asyncio.run(_scrape(tmp_path, workers, 3)))
    assert time.monotonic() - started < 2
    assert got[("cm_gateway_messages_total", (("outcome", "delivered"),))] == 7
    assert got[("cm_gateway_workers", ())] == 3
    assert got[("cm_gateway_workers_scraped", ())] == 2


def test_a_stuck_worker_costs_a_scrape_the_timeout_only(tmp_path: Path) -> None:
    async def scrape() -> tuple[bytes, float]:
        hold = asyncio.Event()

        async def stuck(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hold.wait()  # accepts, never answers
            writer.close()

        peers = PeerSet(str(tmp_path), 0, 2)
        server = await asyncio.start_unix_server(stuck, peers.path(1))
        me = MetricsPeers(peers, _worker(2, 0, 0, 0.1), timeout=0.3)
        await me.start()
        try:
            started = time.monotonic()
            body = await me.render()
            return body, time.monotonic() - started
        finally:
            hold.set()
            server.close()
            await me.aclose()

    body, took = asyncio.run(scrape())
    got = _samples(body)
    assert 0.3 <= took < 1.5
    assert got[("cm_gateway_messages_total", (("outcome", "delivered"),))] == 2
    assert got[("cm_gateway_workers_scraped", ())] == 1


def test_one_process_reports_itself_as_the_one_worker_scraped() -> None:
    got = _samples(GatewayMetrics().render())
    assert got[("cm_gateway_workers", ())] == 1
    assert got[("cm_gateway_workers_scraped", ())] == 1
