"""Helpers for the circuit breaker, shadow model and readiness tests: a gateway in
process on real sockets, the HTTP emulator as its classifier, a recording next hop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib

from gateway.config import Config
from gateway.context import Classifier
from gateway.mail import header_fields
from gateway.metrics import GatewayMetrics
from gateway.pipeline import build_processor
from gateway.pipeline._pipeline import Pipeline
from gateway.testing import EmulatorHandle, ReceivedMessage, running_sink

from .pipeline_support import RULES, mail, make_config
from .smtp_front_support import running_server, smtp_config

__all__ = ["Gateway", "emulator_classifier", "header", "numbered_mail", "running_gateway", "sample"]


def emulator_classifier(emu: EmulatorHandle, **overrides: Any) -> dict[str, Any]:
    """``[classifier]`` for the HTTP emulator: short timeout, short batch window."""
    values: dict[str, Any] = {
        "provider": "communications-mining",
        "base_url": emu.base_url,
        "project": emu.project,
        "dataset": emu.dataset,
        "timeout": 1.0,
        "max_wait_ms": 5,
    }
    values.update(overrides)
    return values


def numbered_mail(n: int, subject: str = "Invoice INV-12345", body: str = "") -> bytes:
    """A distinct message (its own Message-ID and body), so dedup never joins two."""
    text = body or f"Please pay the invoice, amount due 100 EUR. Reference {n}."
    return mail(subject, text).replace(b"<m1@example.com>", f"<n{n}@example.com>".encode())


def header(content: bytes, name: str) -> str | None:
    """The first value of header ``name`` in a delivered message."""
    for key, value in header_fields(content):
        if key.lower() == name.lower():
            return value
    return None


def sample(text: str, name: str) -> float:
    """The value of the Prometheus sample line starting with ``name`` (labels included);
    0 when the series does not exist yet."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass
class Gateway:
    """A running gateway: its pipeline, metrics, SMTP port and what the next hop got."""

    pipeline: Pipeline
    metrics: GatewayMetrics
    port: int
    received: list[ReceivedMessage]

    async def send(self, content: bytes) -> tuple[int, str]:
        """Send one message over SMTP; the reply to DATA (a 4xx is returned, not raised)."""
        try:
            _errors, response = await aiosmtplib.send(
                content,
                sender="alice@example.com",
                recipients=["support@example.com"],
                hostname="127.0.0.1",
                port=self.port,
                start_tls=False,
                timeout=60,
            )
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
        return 250, response

    def metric(self, name: str) -> float:
        """One sample of this gateway's /metrics text."""
        return sample(self.metrics.render().decode(), name)

    async def wait_metric(self, name: str, value: float) -> None:
        """Wait (up to 30 s) until sample ``name`` equals ``value``: a failed call is
        counted by the classifier a moment after the pipeline gave up on it."""
        for _ in range(1500):
            if self.metric(name) == value:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{name} is {self.metric(name)}, expected {value}")


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    *,
    stack: Callable[[Config, GatewayMetrics], Classifier] | None = None,
    rules_yaml: str = RULES,
    **sections: dict[str, Any],
) -> AsyncIterator[Gateway]:
    """build_processor(config) behind a real SMTP listener, delivering to a sink.
    ``sections`` go into the config (``classifier={...}``); ``stack(config, metrics)``
    builds the classifier stack in place of the default one."""
    with running_sink() as sink:
        config = make_config(tmp_path, downstream=sink.url, rules_yaml=rules_yaml, **sections)
        metrics = GatewayMetrics()
        built = stack(config, metrics) if stack is not None else None
        pipeline = build_processor(config, metrics=metrics, classifier=built)
        async with running_server(pipeline, smtp_config()) as server:
            yield Gateway(pipeline, metrics, server.port, sink.received)
