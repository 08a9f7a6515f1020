"""The systems the throughput benchmark compares, each started as its own process:

- the Communications Mining emulator (``cm-gateway emulate``) with a fixed latency;
- the plain relay baseline (``tests.perf.baseline_relay``), and the same relay holding
  each message for the API's latency (the throughput bound of the closed loop);
- the gateway (``cm-gateway serve`` with a generated config: the emulator over HTTP as
  provider ``communications-mining``, ``on_error = "deliver"``, the shipped triage rules);
- the next hops: Postfix's ``smtp-sink``, or ``tests.perf.tempfail_sink``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway._cores import usable_cores
from gateway.mail import build_document, parse_message

from .procs import REPO, Proc, free_port, python_module, wait_port

__all__ = [
    "BENCH_TOKEN",
    "Emulator",
    "GatewaySettings",
    "start_baseline",
    "start_gateway",
    "start_tempfail_sink",
]

# A throwaway token for the local emulator; the gateway reads it from CM_BENCH_TOKEN.
BENCH_TOKEN = "bench-token-not-a-secret"


class Emulator:
    """``cm-gateway emulate`` in a child process, with its ledger routes."""

    def __init__(self, latency_ms: float, log_dir: Path) -> None:
        self.proc = Proc(
            "emulator",
            python_module(
                "gateway", "emulate", "--port", "0", "--latency-ms", str(latency_ms),
                "--token", BENCH_TOKEN,
            ),
            log_dir=log_dir,
            banner=r"listening on (http://\S+)",
        )  # fmt: skip
        assert self.proc.banner is not None
        self.base_url = self.proc.banner.group(1)
        self._client = httpx.Client(timeout=60.0)

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats`` (``documents_billed``, ``requests``...)."""
        response = self._client.get(f"{self.base_url}/_emulator/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def reset(self) -> None:
        """Clear the ledger and the request counters."""
        self._client.post(f"{self.base_url}/_emulator/reset").raise_for_status()

    def warm(self, mails: list[bytes], batch: int = 64) -> None:
        """Have the emulator score ``mails`` once (as the gateway would send them), so
        that the first system measured does not pay for filling its memo of scored texts
        while the later ones find it full; then clear the ledger."""
        url = f"{self.base_url}/api/v1/datasets/acme/inbox/labellers/live/predict-raw-emails"
        headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
        for start in range(0, len(mails), batch):
            documents = [
                build_document(parse_message(raw), raw) for raw in mails[start : start + batch]
            ]
            body = {"documents": documents, "transform_tag": "generic.0.CONVKER5"}
            self._client.post(url, json=body, headers=headers).raise_for_status()
        self.reset()

    def close(self) -> None:
        """Stop the process."""
        self._client.close()
        self.proc.stop()


@dataclass(frozen=True)
class GatewaySettings:
    """The knobs of the gateway under test."""

    # "auto": no workers key with --defaults (one per usable core), "auto" otherwise.
    workers: int | str = 1
    max_batch: int = 64
    max_wait_ms: float = 20.0
    max_in_flight: int = 4
    classify_max_size: int = 10_485_760
    log_level: str = "info"
    pool_size: int = 16
    send_when_idle: bool = True
    shared_batcher: bool = True
    min_batch: int = 1
    target_batch: int | str = 0
    # No tuning key in the config (issue 20): every value above but ``workers`` unused.
    defaults: bool = False


def _gateway_config(
    port: int, sink_port: int, emulator_url: str, s: GatewaySettings, repo: Path = REPO
) -> str:
    rules = repo / "rules" / "shared-inbox-triage.yaml"
    if s.defaults:
        return _defaults_config(port, sink_port, emulator_url, s.workers, s.log_level, rules)
    return f"""
[smtp]
listen = "127.0.0.1:{port}"
hostname = "gw.bench.example"
max_connections = 1000
workers = {_toml(s.workers)}
timeout = 300

[downstream]
url = "smtp://127.0.0.1:{sink_port}"
timeout = 60
pool_size = {s.pool_size}

[classifier]
provider = "communications-mining"
base_url = "{emulator_url}"
project = "acme"
dataset = "inbox"
token_env = "CM_BENCH_TOKEN"
on_error = "deliver"
timeout = 30
max_batch = {s.max_batch}
max_wait_ms = {s.max_wait_ms}
max_in_flight = {s.max_in_flight}
send_when_idle = {str(s.send_when_idle).lower()}
shared_batcher = {str(s.shared_batcher).lower()}
min_batch = {s.min_batch}
target_batch = {s.target_batch if isinstance(s.target_batch, int) else '"auto"'}
classify_max_size = {s.classify_max_size}

[rules]
files = ["{rules}"]

[metrics]
listen = ""

[log]
level = "{s.log_level}"
format = "json"
"""


def _defaults_config(
    port: int,
    sink_port: int,
    emulator_url: str,
    workers: int | str,
    log_level: str,
    rules: Path,
) -> str:
    """What a user writes who tunes nothing: where to listen, relay and classify, and
    max_connections sized for the sessions (the one setting a user must size)."""
    # A number is written even when it is 1: the default is "auto" since issue 20.
    workers_line = f"workers = {workers}\n" if workers != "auto" else ""
    return f"""
[smtp]
listen = "127.0.0.1:{port}"
hostname = "gw.bench.example"
max_connections = 1000
{workers_line}
[downstream]
url = "smtp://127.0.0.1:{sink_port}"

[classifier]
provider = "communications-mining"
base_url = "{emulator_url}"
project = "acme"
dataset = "inbox"
token_env = "CM_BENCH_TOKEN"
on_error = "deliver"

[rules]
files = ["{rules}"]

[metrics]
listen = ""

[log]
level = "{log_level}"
format = "json"
"""


def _toml(workers: int | str) -> str:
    return f'"{workers}"' if isinstance(workers, str) else str(workers)


def worker_count(workers: int | str) -> int:
    """The processes ``workers`` starts here (the benchmark's ports are fixed)."""
    return usable_cores() if workers == "auto" else int(workers)


def _wait_workers(proc: Proc, workers: int | str, timeout: float = 120.0) -> None:
    # The parent prints its banner before the workers listen: count their log lines.
    count = worker_count(workers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.log_path.read_text("utf-8", "replace").count("smtp_listening") >= count:
            return
        if proc.popen.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"gateway workers did not all listen; see {proc.log_path}")


def start_gateway(
    sink_port: int,
    emulator_url: str,
    settings: GatewaySettings,
    log_dir: Path,
    name: str,
    repo: Path = REPO,
) -> tuple[Proc, int]:
    """``cm-gateway serve`` on a free port; returns it once every worker listens.
    ``repo``: the checkout whose ``gateway`` package runs (``tests.perf.ab``)."""
    port = free_port()
    config = log_dir / f"{name}.toml"
    config.write_text(_gateway_config(port, sink_port, emulator_url, settings, repo), "utf-8")
    proc = Proc(
        name,
        python_module("gateway", "serve", "--config", str(config)),
        log_dir=log_dir,
        env={"CM_BENCH_TOKEN": BENCH_TOKEN},
        banner=r"cm-gateway listening on",
        cwd=repo,
    )
    _wait_workers(proc, settings.workers)
    wait_port(port)
    return proc, port


def start_baseline(sink_port: int, log_dir: Path, hold_ms: float = 0.0) -> tuple[Proc, int]:
    """The plain aiosmtpd relay on a free port; with ``hold_ms``, the hold relay."""
    proc = Proc(
        "hold-relay" if hold_ms else "baseline",
        python_module(
            "tests.perf.baseline_relay", "--listen", "127.0.0.1:0",
            "--next-hop", f"127.0.0.1:{sink_port}", "--hold-ms", str(hold_ms),
        ),
        log_dir=log_dir,
        banner=r"listening on \S+:(\d+)",
    )  # fmt: skip
    assert proc.banner is not None
    return proc, int(proc.banner.group(1))


def start_tempfail_sink(share: float, log_dir: Path) -> tuple[Proc, int]:
    """The sink that tempfails the first attempt of ``share`` of the messages."""
    proc = Proc(
        "tempfail-sink",
        python_module("tests.perf.tempfail_sink", "--listen", "127.0.0.1:0", "--share", str(share)),
        log_dir=log_dir,
        banner=r"listening on \S+:(\d+)",
    )
    assert proc.banner is not None
    return proc, int(proc.banner.group(1))
