"""/readyz during shutdown: 503 while the sessions in DATA drain, so a load balancer
stops sending before the port closes."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
from pathlib import Path

import aiosmtplib
import httpx
import pytest

from gateway.ops import serve
from gateway.ops._process import YOUNG_COLLECTION_THRESHOLD
from gateway.testing import free_port, running_emulator, running_sink

from .ops_support import emulator_classifier, numbered_mail
from .pipeline_support import make_config
from .serve_support import announcer


async def _listening_port(out: io.StringIO, task: asyncio.Task[int]) -> int:
    for _ in range(1500):
        if "listening on" in out.getvalue() or task.done():
            break
        await asyncio.sleep(0.02)
    assert "listening on" in out.getvalue(), task
    return int(out.getvalue().split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])


async def test_readyz_is_503_draining_while_a_message_in_data_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """SIGTERM with a message in DATA: /readyz turns 503 "draining", the message is still
    delivered, and serve() exits 0."""
    metrics_port = free_port()
    with running_emulator(latency_ms=3000) as emu, running_sink() as sink:
        monkeypatch.setenv("REINFER_TOKEN", emu.token or "")
        config = make_config(
            tmp_path,
            downstream=sink.url,
            classifier=emulator_classifier(emu, timeout=20.0),
            smtp={"listen": "127.0.0.1:0"},
            metrics={"listen": f"127.0.0.1:{metrics_port}"},
        )
        out = io.StringIO()
        task = asyncio.create_task(serve(config, announce=announcer(out)))
        smtp_port = await _listening_port(out, task)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{metrics_port}", timeout=30
        ) as http:
            before = await http.get("/readyz")
            sending = asyncio.create_task(
                aiosmtplib.send(
                    numbered_mail(1),
                    sender="alice@example.com",
                    recipients=["support@example.com"],
                    hostname="127.0.0.1",
                    port=smtp_port,
                    start_tls=False,
                    timeout=60,
                )
            )
            for _ in range(1500):  # until the gateway is inside DATA, waiting on the model
                if emu.stats()["requests"] >= 1:
                    break
                await asyncio.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)
            during = None
            for _ in range(1500):
                response = await http.get("/readyz")
                if response.status_code == 503:
                    during = response
                    break
                await asyncio.sleep(0.02)
            _, reply = await asyncio.wait_for(sending, 60)
        assert await asyncio.wait_for(task, 60) == 0
    assert before.status_code == 200
    assert during is not None, "/readyz never turned 503 during the drain"
    assert during.json()["failed"] == ["draining"]
    assert reply.startswith("2.0.0")
    assert len(sink.received) == 1


async def test_serve_freezes_start_up_out_of_the_collectors_walk_and_collects_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A full collection no longer walks the objects start-up built (tens of thousands,
    100+ ms a walk on this machine, every session stalled meanwhile), and the young
    generation is collected after 10,000 allocations instead of 700 (a message's objects
    live longer than 700 allocations under load)."""
    gc.unfreeze()
    threshold = gc.get_threshold()
    gc.set_threshold(700, *threshold[1:])  # CPython's default: serve in this process set it
    with running_emulator() as emu, running_sink() as sink:
        monkeypatch.setenv("REINFER_TOKEN", emu.token or "")
        config = make_config(
            tmp_path,
            downstream=sink.url,
            classifier=emulator_classifier(emu),
            smtp={"listen": "127.0.0.1:0"},
        )
        out = io.StringIO()
        task = asyncio.create_task(serve(config, announce=announcer(out)))
        try:
            await _listening_port(out, task)
            assert gc.get_freeze_count() > 10_000
            assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *threshold[1:])
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            assert await asyncio.wait_for(task, 60) == 0
            gc.unfreeze()
            gc.set_threshold(*threshold)
