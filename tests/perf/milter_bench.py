"""Postfix alone, Postfix + the after-queue content filter, Postfix + the milter: one load.

Each system is a private Postfix (tests/integration/postfix_harness.py, built from the
deploy/ snippets) delivering to Postfix's ``smtp-sink``; the gateway classifies through
``cm-gateway emulate`` over HTTP with a fixed API latency. ``smtp-source`` sends the same
load to Postfix's front smtpd each time; a system's time runs from the first connection
until Postfix's queue is empty (everything delivered). CPU per message is Postfix's
(master, its live children and the children it reaped) plus the gateway's, not the
emulator's or the load generator's::

    python -m tests.perf.milter_bench --messages 1000 --sessions 50 --size 4096 --latency-ms 100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.integration.postfix_harness import PostfixInstance
from tests.integration.postfix_milter_support import MilterPostfix

from .procs import (
    Proc,
    free_port,
    python_module,
    smtp_source,
    start_smtp_sink,
    tree_cpu_seconds,
    wait_port,
)
from .systems import BENCH_TOKEN, Emulator, GatewaySettings, _gateway_config

__all__ = ["Figures", "render", "run"]

ALONE = "Postfix alone"
AFTER_QUEUE = "Postfix + after-queue filter"
MILTER = "Postfix + milter"


@dataclass(frozen=True)
class Figures:
    name: str
    messages: int
    seconds: float
    postfix_cpu: float
    gateway_cpu: float
    classified: int  # the gateway's "message" log lines with status=classified, this run
    api_requests: int  # predict requests the emulator answered, this run

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms_per_msg(self) -> float:
        return (self.postfix_cpu + self.gateway_cpu) * 1000 / self.messages


def _postfix_cpu(master: int) -> float:
    """The master's own and reaped children's CPU, plus its live descendants'."""
    fields = Path(f"/proc/{master}/stat").read_text().rpartition(")")[2].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return tree_cpu_seconds(master) + reaped


def _wait_empty(postfix: PostfixInstance, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while postfix.queue():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{postfix.root}: queue not empty after {timeout:g}s")
        time.sleep(0.1)


def _classified(gateway: Proc | None) -> int:
    if gateway is None:
        return 0
    text = gateway.log_path.read_text("utf-8", "replace")
    return sum(1 for line in text.splitlines() if '"status": "classified"' in line)


def _measure(
    name: str,
    postfix: PostfixInstance,
    gateway: Proc | None,
    emulator: Emulator,
    *,
    messages: int,
    sessions: int,
    size: int,
) -> Figures:
    # A short warm-up: smtpd/cleanup/smtp processes started, the gateway's imports done.
    smtp_source(postfix.front_port, messages=sessions, sessions=sessions, size=size)
    _wait_empty(postfix)
    master = postfix.master_pid()
    assert master is not None
    pf0 = _postfix_cpu(master)
    gw0 = tree_cpu_seconds(gateway.pid) if gateway is not None else 0.0
    classified0, requests0 = _classified(gateway), int(emulator.stats()["requests"])
    started = time.perf_counter()
    smtp_source(postfix.front_port, messages=messages, sessions=sessions, size=size)
    _wait_empty(postfix)
    seconds = time.perf_counter() - started
    pf1 = _postfix_cpu(master)
    gw1 = tree_cpu_seconds(gateway.pid) if gateway is not None else 0.0
    # smtp-sink keeps nothing: delivery is proven by smtp-source's success and the empty
    # queue (a message Postfix could not deliver would sit in the deferred queue).
    time.sleep(0.5)  # the gateway writes its log line just after its reply
    classified = _classified(gateway) - classified0
    requests = int(emulator.stats()["requests"]) - requests0
    return Figures(name, messages, seconds, pf1 - pf0, gw1 - gw0, classified, requests)


def _gateway(
    log_dir: Path, emulator_url: str, *, smtp: str, milter: str, downstream: int, name: str
) -> Proc:
    # The benchmark's usual gateway (systems.py), with the fronts of this system.
    toml = _gateway_config(0, downstream, emulator_url, GatewaySettings())
    toml = toml.replace('listen = "127.0.0.1:0"', f'listen = "{smtp}"', 1)
    if milter:
        toml += f'\n[milter]\nlisten = "{milter}"\n'
    config = log_dir / f"{name}.toml"
    config.write_text(toml, "utf-8")
    return Proc(
        name,
        python_module("gateway", "serve", "--config", str(config)),
        log_dir=log_dir,
        env={"CM_BENCH_TOKEN": BENCH_TOKEN},
        banner=r"cm-gateway listening on",
    )


def run(
    *, messages: int, sessions: int, size: int, latency_ms: float, out: Callable[[str], None]
) -> list[Figures]:
    """The three systems, one after the other, under the same load."""
    log_dir = Path(tempfile.mkdtemp(prefix="cmgw-milter-bench-"))
    sink, sink_port = start_smtp_sink(log_dir)
    emulator = Emulator(latency_ms, log_dir)
    results: list[Figures] = []
    try:
        # 1. Postfix alone: the milter snippet with no milter.
        alone = MilterPostfix(sink_port=sink_port, milter_port=1)
        alone.extra_main_cf = "smtpd_milters =\nnon_smtpd_milters =\n"
        results.append(_system(ALONE, alone, None, emulator, messages, sessions, size, out))
        # 2. The shipped after-queue content filter (deploy/postfix/).
        after = PostfixInstance(sink_port=sink_port)
        gw = _gateway(
            log_dir,
            emulator.base_url,
            smtp=f"127.0.0.1:{after.filter_port}",
            milter="",
            downstream=after.reinject_port,
            name="gateway-after-queue",
        )
        results.append(_system(AFTER_QUEUE, after, gw, emulator, messages, sessions, size, out))
        # 3. The milter (deploy/postfix-milter/).
        port = free_port()
        milter = MilterPostfix(sink_port=sink_port, milter_port=port)
        gw = _gateway(
            log_dir,
            emulator.base_url,
            smtp="",
            milter=f"127.0.0.1:{port}",
            downstream=sink_port,
            name="gateway-milter",
        )
        results.append(_system(MILTER, milter, gw, emulator, messages, sessions, size, out))
    finally:
        emulator.close()
        sink.stop()
    return results


def _system(
    name: str,
    postfix: PostfixInstance,
    gateway: Proc | None,
    emulator: Emulator,
    messages: int,
    sessions: int,
    size: int,
    out: Callable[[str], None],
) -> Figures:
    try:
        postfix.start()
        if isinstance(postfix, MilterPostfix) and gateway is not None:
            wait_port(postfix.milter_port)
        figures = _measure(
            name, postfix, gateway, emulator, messages=messages, sessions=sessions, size=size
        )
        out(f"{name}: {figures.rate:.0f} msg/s, {figures.cpu_ms_per_msg:.2f} ms CPU/msg")
        return figures
    finally:
        if gateway is not None:
            gateway.stop()
        postfix.destroy()


def render(results: list[Figures], *, sessions: int, size: int, latency_ms: float) -> str:
    lines = [
        f"{results[0].messages} messages, {sessions} sessions, {size} B, API {latency_ms:g} ms",
        "",
        "| system | msgs/s | CPU ms/msg (Postfix + gateway) | Postfix | gateway | API calls/msg |",
        "|---|---|---|---|---|---|",
    ]
    for f in results:
        lines.append(
            f"| {f.name} | {f.rate:.0f} | {f.cpu_ms_per_msg:.2f} "
            f"| {f.postfix_cpu * 1000 / f.messages:.2f} | {f.gateway_cpu * 1000 / f.messages:.2f} "
            f"| {f.api_requests / f.messages:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    results = run(
        messages=args.messages,
        sessions=args.sessions,
        size=args.size,
        latency_ms=args.latency_ms,
        out=lambda line: print(line, file=sys.stderr),
    )
    print(render(results, sessions=args.sessions, size=args.size, latency_ms=args.latency_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
