"""The Communications Mining emulator for tests.

``running_emulator()`` serves the Communications Mining emulator over real HTTP on
loopback, in a background thread with its own event loop, so that sync and async tests
alike can point a real client at ``handle.base_url``::

    with running_emulator(fail_rate=0.5, fail_status="429", seed=1) as emu:
        url = emu.url("predict-raw-emails")          # .../labellers/live/predict-raw-emails
        ...
        assert emu.stats()["documents_billed"] == 3
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.emulator import (
    CLIENT_MAX_SIZE,
    EmulatorServer,
    EmulatorState,
    FaultInjector,
    FaultSettings,
    KeywordModel,
    start_server,
)

__all__ = ["EmulatorHandle", "running_emulator"]


@dataclass
class EmulatorHandle:
    """A running emulator: where it is, and its control routes as methods."""

    base_url: str
    token: str | None
    project: str = "acme"
    dataset: str = "inbox"
    _client: httpx.Client = field(default_factory=httpx.Client, repr=False)

    def url(self, route: str = "predict-raw-emails", version: str | int = "live") -> str:
        """The full URL of an API route, e.g. ``url("validation", "latest")``."""
        return (
            f"{self.base_url}/api/v1/datasets/{self.project}/{self.dataset}"
            f"/labellers/{version}/{route}"
        )

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer <token>`` (any token works when the emulator has none)."""
        return {"Authorization": f"Bearer {self.token or 'any-token'}"}

    def stats(self) -> dict[str, Any]:
        """The JSON of ``GET /_emulator/stats`` (``documents_billed``, ``requests``...)."""
        response = self._client.get(f"{self.base_url}/_emulator/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def set_faults(
        self,
        *,
        fail_rate: float | None = None,
        fail_status: str | int | None = None,
        latency_ms: float | None = None,
        retry_after: float | None = None,
        seed: int | None = None,
        version_latency_ms: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Change fault injection at run time; unspecified values stay. Returns the new set.

        ``seed`` re-seeds the fault RNG (replays the same sequence of faults);
        ``version_latency_ms`` (e.g. ``{"staging": 3000}``) slows one model version."""
        changes = {
            "fail_rate": fail_rate,
            "fail_status": fail_status,
            "latency_ms": latency_ms,
            "retry_after": retry_after,
            "seed": seed,
            "version_latency_ms": version_latency_ms,
        }
        response = self._client.post(
            f"{self.base_url}/_emulator/faults",
            json={k: v for k, v in changes.items() if v is not None},
        )
        if response.status_code != 200:
            raise ValueError(response.json().get("message", response.text))
        faults: dict[str, Any] = response.json()["faults"]
        return faults

    def reset(self) -> None:
        """Clear the billing ledger and the request counters."""
        self._client.post(f"{self.base_url}/_emulator/reset").raise_for_status()


@contextmanager
def running_emulator(
    *,
    token: str | None = "test-token",
    latency_ms: float = 0.0,
    fail_rate: float = 0.0,
    fail_status: str = "503",
    retry_after: float = 1.0,
    seed: int | None = 0,
    taxonomy: str | Path | None = None,
    host: str = "127.0.0.1",
    client_max_size: int = CLIENT_MAX_SIZE,
) -> Iterator[EmulatorHandle]:
    """Serve the emulator on ``host`` (a free port) for the duration of the block.

    ``token`` None accepts any non-empty Bearer token; ``client_max_size`` is the request
    body cap in bytes (413 above it)."""
    settings = FaultSettings(
        fail_rate=fail_rate,
        fail_status=str(fail_status),
        latency_ms=latency_ms,
        retry_after=retry_after,
    )
    state = EmulatorState(
        model=KeywordModel.from_path(taxonomy),
        token=token,
        faults=FaultInjector(settings, seed=seed),
    )
    loop = asyncio.new_event_loop()
    started: Future[EmulatorServer] = Future()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                start_server(state, host, 0, client_max_size=client_max_size)
            )
        except BaseException as exc:  # hand the failure to the caller's thread
            started.set_exception(exc)
            return
        started.set_result(server)
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=serve, name="cm-emulator", daemon=True)
    thread.start()
    server = started.result(timeout=30)
    handle = EmulatorHandle(base_url=server.base_url, token=token)
    try:
        yield handle
    finally:
        handle._client.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
