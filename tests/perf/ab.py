"""A/B of two checkouts of the gateway under the same load, in one run (issue 20).

    python -m tests.perf.ab TREE_A TREE_B [--rate 685 --messages 4000 --sessions 300
                                           --reps 4] [--closed 50]

Each tree is a checkout (``git worktree add ../b HEAD~1``) whose ``gateway`` package is
run with the defaults (``systems.GatewaySettings(defaults=True)``: no tuning key). One
emulator (100 ms) and one ``smtp-sink`` serve every cell. A cell starts the tree's
gateway, warms it (3,000 messages through ``smtp-source``), then measures either

- an open load (default): ``loadgen.drive_open`` at a fixed ``--rate``, so both trees
  carry the same load (the throughput benchmark's half-peak rate differs with each
  system's own peak): p50 and p99 of DATA, the gateway's own ``classify_ms``,
  ``relay_ms`` and ``total_ms`` p99 from its message log, and the CPU per message of
  the gateway's processes and of the emulator; or
- ``--closed N``: ``smtp-source`` with N sessions: msgs/s and API requests per message.

The order alternates (A B, B A, A B, ...) so that a drift of the machine falls on both,
and the emulator scores the cells' texts before the first cell: without that the first
cell measured paid for filling its memo (~3.5 x its CPU per message) and always lost,
which made a change look better or worse depending only on which tree came first.
Medians per tree at the end. This machine is noisy: compare medians of several reps,
and look at the cells, not one figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .loadgen import TEXT_PERIOD, drive_open, make_message, percentile
from .procs import smtp_source, start_smtp_sink, tree_cpu_seconds
from .systems import Emulator, GatewaySettings, start_gateway

__all__ = ["main"]

WARM_MESSAGES = 3000
STAGES = ("classify_ms", "relay_ms", "total_ms")


def _stage_p99(log: Path, tag: str) -> dict[str, float]:
    """p99 of each stage over the message log lines of this cell's messages."""
    values: dict[str, list[float]] = {k: [] for k in STAGES}
    with log.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if '"event": "message"' not in line or tag not in line:
                continue
            row = json.loads(line)
            for key in STAGES:
                if key in row:
                    values[key].append(float(row[key]))
    return {f"{k[:-3]}_p99": round(percentile(v, 99), 1) for k, v in values.items() if v}


def _cell(
    tree: Path, emulator: Emulator, sink_port: int, a: argparse.Namespace, name: str
) -> dict[str, Any]:
    settings = GatewaySettings(workers="auto", defaults=True)
    proc, port = start_gateway(sink_port, emulator.base_url, settings, a.log_dir, name, tree)
    try:
        smtp_source(port, messages=WARM_MESSAGES, sessions=a.sessions, size=4096)
        if a.closed:
            emulator.reset()
            elapsed = smtp_source(port, messages=a.messages, sessions=a.closed, size=4096)
            requests = emulator.stats()["requests"]
            return {
                "msgs_s": round(a.messages / elapsed, 1),
                "req_per_msg": round(requests / a.messages, 4),
            }
        gateway_cpu = tree_cpu_seconds(proc.pid)
        emulator_cpu = tree_cpu_seconds(emulator.proc.pid)
        tag = f"{name}t{int(time.time())}"
        mails = [make_message(tag, i, 4096) for i in range(a.messages)]
        result = asyncio.run(drive_open(port, mails, rate=a.rate, sessions=a.sessions))
        gateway_cpu = tree_cpu_seconds(proc.pid) - gateway_cpu
        emulator_cpu = tree_cpu_seconds(emulator.proc.pid) - emulator_cpu
        time.sleep(0.5)  # the last log lines
    finally:
        proc.stop()
    summary = result.summary()
    return {
        "p50": round(summary["p50_ms"], 1),
        "p99": round(summary["p99_ms"], 1),
        "failed": result.failed,
        "cpu_ms": round(gateway_cpu * 1000 / a.messages, 2),
        "emulator_cpu_ms": round(emulator_cpu * 1000 / a.messages, 2),
        **_stage_p99(proc.log_path, tag),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cm-gateway A/B of two checkouts (issue 20)")
    p.add_argument("trees", nargs=2, type=Path, help="two checkouts: A and B")
    p.add_argument("--rate", type=float, default=685.0, help="open load, msgs/s")
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--sessions", type=int, default=300, help="driver sessions (open load)")
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--closed", type=int, default=0, help="N: smtp-source, N sessions")
    p.add_argument("--log-dir", type=Path, default=None)
    a = p.parse_args(argv)
    a.log_dir = a.log_dir or Path(tempfile.mkdtemp(prefix="cm-ab-"))
    a.log_dir.mkdir(parents=True, exist_ok=True)
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the cells, print each, then the medians per tree."""
    a = _parse(argv)
    trees: list[Path] = [t.resolve() for t in a.trees]
    cells: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    emulator = Emulator(100, a.log_dir)
    sink, sink_port = start_smtp_sink(a.log_dir)
    try:
        emulator.warm([make_message("warm", i, 4096) for i in range(TEXT_PERIOD)])
        for rep in range(a.reps):
            for which in (0, 1) if rep % 2 == 0 else (1, 0):
                row = _cell(trees[which], emulator, sink_port, a, f"{'ab'[which]}{rep}")
                cells[which].append(row)
                print(f"rep {rep} {'AB'[which]} {trees[which]}: {row}", flush=True)
    finally:
        sink.stop()
        emulator.close()
    for which, rows in cells.items():
        medians = {
            key: statistics.median(r[key] for r in rows)
            for key in rows[0]
            if all(isinstance(r.get(key), int | float) for r in rows)
        }
        print(f"{'AB'[which]} {trees[which]}: medians of {len(rows)} {medians}")
    print(f"logs: {a.log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
