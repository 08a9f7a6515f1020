"""``[metrics] listen``: /metrics, /healthz and /readyz over real sockets, in-process."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest

from gateway.config import Config
from gateway.metrics import GatewayMetrics
from gateway.ops import serve
from gateway.ops._metrics_server import MetricsServer, Readiness
from gateway.pipeline import build_processor
from gateway.testing import EmulatorHandle, free_port, running_sink

from .ops_support import emulator_classifier
from .pipeline_support import mail, make_config
from .serve_support import announcer
from .smtp_front_support import running_server, smtp_config

INVOICE = mail("Invoice INV-12345", "Please find the invoice attached, amount due 100 EUR.")


def _config(tmp_path: Path, downstream: str, classifier: dict[str, Any] | None = None) -> Config:
    return make_config(
        tmp_path, downstream=downstream, classifier=classifier, metrics={"listen": "127.0.0.1:0"}
    )


@asynccontextmanager
async def _metrics_http(
    config: Config, metrics: GatewayMetrics, readiness: Readiness | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    server = MetricsServer(config, metrics, readiness=readiness)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{server.address}", timeout=10) as client:
            yield client
    finally:
        await server.aclose()


async def _send_invoice(port: int) -> None:
    await aiosmtplib.send(
        INVOICE,
        sender="alice@example.com",
        recipients=["support@example.com"],
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
    )


def _sample(text: str, name: str) -> float:
    """The value of the sample line starting with ``name `` (labels included)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name!r} in:\n{text}")


async def test_metrics_count_a_delivered_message_its_stages_and_its_rule_hit(tmp_path: Path):
    """After one mail through a running gateway, /metrics shows it delivered and its rule hit."""
    with running_sink() as sink:
        config = _config(tmp_path, sink.url)
        metrics = GatewayMetrics()
        processor = build_processor(config, metrics=metrics)
        async with running_server(processor, smtp_config()) as server:
            metrics.track_sessions(lambda: len(server.tracker.live))
            async with _metrics_http(config, metrics) as http:
                await _send_invoice(server.port)
                response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _sample(text, 'cm_gateway_messages_total{outcome="delivered"}') == 1
    assert _sample(text, 'cm_gateway_rule_hits_total{rule="invoices-to-ap"}') == 1
    assert _sample(text, "cm_gateway_api_requests_total") == 1
    assert _sample(text, "cm_gateway_documents_billed_total") == 1
    assert _sample(text, "cm_gateway_batch_size_count") == 1
    assert _sample(text, "cm_gateway_cache_hits_total") == 0
    assert _sample(text, "cm_gateway_cache_misses_total") == 1
    for stage in ("parse", "classify", "rules", "relay", "total"):
        assert _sample(text, f'cm_gateway_stage_seconds_count{{stage="{stage}"}}') == 1
    assert "cm_gateway_sessions_in_flight " in text
    assert len(sink.received) == 1


async def test_metrics_count_a_repeated_message_as_a_cache_hit_not_a_second_request(
    tmp_path: Path,
):
    """The same message twice is classified once: one API request, one cache hit."""
    with running_sink() as sink:
        config = _config(tmp_path, sink.url)
        metrics = GatewayMetrics()
        processor = build_processor(config, metrics=metrics)
        async with running_server(processor, smtp_config()) as server:
            for _ in range(2):
                await _send_invoice(server.port)
    text = metrics.render().decode()
    assert _sample(text, 'cm_gateway_messages_total{outcome="delivered"}') == 2
    assert _sample(text, "cm_gateway_api_requests_total") == 1
    assert _sample(text, "cm_gateway_cache_hits_total") == 1


@pytest.mark.emulator(per_test=True, latency_ms=60, token_env="REINFER_TOKEN")
async def test_metrics_show_the_api_latency_and_batch_target_the_batcher_learned(
    tmp_path: Path, emulator: EmulatorHandle
):
    """With target_batch "auto" (the default) /metrics says what the batcher learned: the
    API's latency (seconds, an average of answered calls) and its batch target."""
    with running_sink() as sink:
        config = _config(tmp_path, sink.url, classifier=emulator_classifier(emulator))
        assert config.classifier.target_batch == "auto"
        metrics = GatewayMetrics()
        processor = build_processor(config, metrics=metrics)
        async with running_server(processor, smtp_config()) as server:
            await _send_invoice(server.port)
    text = metrics.render().decode()
    assert 0.06 <= _sample(text, "cm_gateway_batcher_latency_seconds") < 5
    assert _sample(text, "cm_gateway_batcher_target_documents") >= 1


async def test_two_gateways_in_one_process_keep_separate_registries():
    """Each GatewayMetrics has its own registry: counting in one leaves the other at zero."""
    first, second = GatewayMetrics(), GatewayMetrics()
    first.observe_message({"recipients": 1, "total_ms": 3.0}, 250)
    assert _sample(first.render().decode(), 'cm_gateway_messages_total{outcome="delivered"}') == 1
    assert 'outcome="delivered"' not in second.render().decode()


async def test_healthz_answers_200_ok(tmp_path: Path):
    """/healthz is 200 "ok" while the process runs, whatever the next hop does."""
    config = _config(tmp_path, f"smtp://127.0.0.1:{free_port()}")
    async with _metrics_http(config, GatewayMetrics()) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.text.strip() == "ok"


async def test_readyz_is_200_while_the_downstream_answers_ehlo(tmp_path: Path):
    """/readyz is 200 with every check ok when the SMTP next hop answers."""
    with running_sink() as sink:
        config = _config(tmp_path, sink.url)
        async with _metrics_http(config, GatewayMetrics()) as http:
            response = await http.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert body["failed"] == []
    assert body["checks"]["downstream"]["ok"] is True


async def test_readyz_is_503_naming_the_downstream_when_it_is_down(tmp_path: Path):
    """/readyz is 503 with a JSON body naming the downstream check when nobody listens."""
    port = free_port()
    config = _config(tmp_path, f"smtp://127.0.0.1:{port}")
    async with _metrics_http(config, GatewayMetrics()) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["failed"] == ["downstream"]
    assert f"127.0.0.1:{port}" in body["checks"]["downstream"]["detail"]
    assert body["checks"]["classifier"]["ok"] is True


async def test_readyz_caches_the_probe_so_a_scrape_burst_probes_once(tmp_path: Path):
    """Within the cache window /readyz repeats the last result instead of probing again."""
    with running_sink() as sink:
        config = _config(tmp_path, sink.url)
        readiness = Readiness(config, ttl=60)
        async with _metrics_http(config, GatewayMetrics(), readiness) as http:
            assert (await http.get("/readyz")).status_code == 200
    # The sink is gone, but the cached result still stands.
    async with _metrics_http(config, GatewayMetrics(), readiness) as http:
        assert (await http.get("/readyz")).status_code == 200
    async with _metrics_http(config, GatewayMetrics(), Readiness(config, ttl=0)) as http:
        assert (await http.get("/readyz")).status_code == 503


async def test_readyz_is_503_naming_the_classifier_when_unreachable_and_on_error_defer(
    tmp_path: Path,
):
    """With on_error = "defer" an unreachable classifier makes /readyz 503 (classifier)."""
    os.environ.setdefault("CM_TEST_METRICS_SECRET", "s3cret")
    with running_sink() as sink:
        config = _config(
            tmp_path,
            sink.url,
            classifier={
                "provider": "custom",
                "url": f"http://127.0.0.1:{free_port()}/predict",
                "secret_env": "CM_TEST_METRICS_SECRET",
                "on_error": "defer",
            },
        )
        async with _metrics_http(config, GatewayMetrics()) as http:
            response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["classifier"]


async def test_readyz_ignores_an_unreachable_classifier_when_on_error_deliver(tmp_path: Path):
    """With on_error = "deliver" mail flows without the classifier, so /readyz stays 200."""
    with running_sink() as sink:
        config = _config(
            tmp_path,
            sink.url,
            classifier={
                "provider": "custom",
                "url": f"http://127.0.0.1:{free_port()}/predict",
                "on_error": "deliver",
            },
        )
        async with _metrics_http(config, GatewayMetrics()) as http:
            response = await http.get("/readyz")
    assert response.status_code == 200


async def test_readyz_checks_that_the_maildir_is_writable(tmp_path: Path):
    """A Maildir next hop is ready when writable, 503 (downstream) when it cannot be."""
    good = _config(tmp_path, f"maildir://{tmp_path / 'maildir'}")
    (tmp_path / "blocker").write_text("a file, not a directory", encoding="utf-8")
    bad = _config(tmp_path, f"maildir://{tmp_path / 'blocker' / 'maildir'}")
    async with _metrics_http(good, GatewayMetrics()) as http:
        assert (await http.get("/readyz")).status_code == 200
    async with _metrics_http(bad, GatewayMetrics()) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["downstream"]


async def test_serve_starts_the_metrics_listener_and_stops_it_on_sigterm(tmp_path: Path):
    """serve() answers /healthz and /metrics on [metrics] listen and closes it at shutdown."""
    metrics_port = free_port()
    with running_sink() as sink:
        config = make_config(
            tmp_path,
            downstream=sink.url,
            smtp={"listen": "127.0.0.1:0"},
            metrics={"listen": f"127.0.0.1:{metrics_port}"},
        )
        out = io.StringIO()
        task = asyncio.create_task(serve(config, announce=announcer(out)))
        for _ in range(500):
            if "listening on" in out.getvalue() or task.done():
                break
            await asyncio.sleep(0.02)
        assert "listening on" in out.getvalue(), task
        smtp_port = int(out.getvalue().split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
        try:
            await _send_invoice(smtp_port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as http:
                assert (await http.get("/healthz")).status_code == 200
                text = (await http.get("/metrics")).text
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            assert await asyncio.wait_for(task, 30) == 0
    assert _sample(text, 'cm_gateway_messages_total{outcome="delivered"}') == 1
    async with httpx.AsyncClient() as http:
        try:
            await http.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2)
        except httpx.ConnectError:
            closed = True
        else:
            closed = False
    assert closed


async def test_an_empty_listen_disables_the_metrics_listener(tmp_path: Path):
    """[metrics] listen = "" starts no HTTP server (serve() keeps only the SMTP port)."""
    from gateway.ops import start_metrics

    config = make_config(tmp_path, downstream="maildir://m", metrics={"listen": ""})
    assert await start_metrics(config, GatewayMetrics(), reuse_port=False) is None


async def test_metrics_show_the_downstream_pool_and_classifier_retries(tmp_path: Path):
    """Two mails over one pooled next-hop connection (created 1, reused 1, idle 1); with
    the API answering 503, /metrics counts the retries by the error that caused them."""
    from gateway.testing import running_emulator

    os.environ["CM_TEST_METRICS_TOKEN"] = "test-token"
    with running_sink() as sink, running_emulator(fail_rate=1.0, fail_status="503") as emu:
        config = _config(
            tmp_path,
            sink.url,
            classifier={
                "provider": "communications-mining",
                "base_url": emu.base_url,
                "project": emu.project,
                "dataset": emu.dataset,
                "token_env": "CM_TEST_METRICS_TOKEN",
                "timeout": 5.0,
            },
        )
        metrics = GatewayMetrics()
        processor = build_processor(config, metrics=metrics)
        async with running_server(processor, smtp_config()) as server:
            for n in range(2):
                await aiosmtplib.send(
                    INVOICE.replace(b"INV-12345", f"INV-{n}".encode()),
                    sender="alice@example.com",
                    recipients=["support@example.com"],
                    hostname="127.0.0.1",
                    port=server.port,
                    start_tls=False,
                )
            text = metrics.render().decode()
        api_calls = emu.stats()["requests"]
    assert len(sink.received) == 2
    assert (
        _sample(text, 'cm_gateway_downstream_connection_events{event="created",route="default"}')
        == 1
    )
    assert (
        _sample(text, 'cm_gateway_downstream_connection_events{event="reused",route="default"}')
        == 1
    )
    assert _sample(text, 'cm_gateway_downstream_connections{route="default",state="idle"}') == 1
    assert _sample(text, 'cm_gateway_downstream_connections{route="default",state="in_use"}') == 0
    retries = _sample(text, 'cm_gateway_api_retries_total{kind="server-error"}')
    assert retries >= 1
    assert retries == api_calls - _sample(text, "cm_gateway_api_requests_total")
