"""How many cores this process may use: what ``[smtp] workers = "auto"`` counts.

``os.cpu_count()`` counts the machine's: a container limited to 2 CPUs on a 64-core host
would start 64 workers, each with its memory, taking turns on 2 CPUs. So: the CPUs this
process may run on (``sched_getaffinity``: taskset, cpusets), capped by the CPU quota of
its cgroup and of every cgroup above it (v2 ``cpu.max``; v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``), rounded up; at most ``MAX_WORKERS``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["MAX_WORKERS", "usable_cores"]

MAX_WORKERS = 64


def usable_cores(root: Path = Path("/")) -> int:
    """The cores this process may use (module docstring); ``root``: where /proc and /sys
    are (tests)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, BSD
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, min(MAX_WORKERS, cores))


def _cgroup_quota(root: Path) -> float | None:
    """The smallest CPU quota (in CPUs) on this process's cgroup path, or None."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: "0::/path"
            base = root / "sys/fs/cgroup"
            quotas += _along(base, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                base = root / "sys/fs/cgroup" / mount
                if base.is_dir():
                    quotas += _along(base, path, _v1_quota)
                    break
    return min(quotas) if quotas else None


def _along(base: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas read in ``base``/``path`` and each of its parents up to ``base``.
    Inside a container's cgroup namespace the path is "/", and ``base`` is its own."""
    found: list[float] = []
    here = base / path.strip("/")
    while True:
        quota = read(here)
        if quota is not None:
            found.append(quota)
        if here == base or base not in here.parents:
            return found
        here = here.parent


def _v2_quota(directory: Path) -> float | None:
    try:
        limit, period = (directory / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        limit = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if limit <= 0 or period <= 0 else limit / period
