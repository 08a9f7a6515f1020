"""``workers = "auto"`` counts the cores this process may use, not the machine's: a
container's CPU quota (cgroup v2 and v1, on its own cgroup or a parent) caps it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway._cores import usable_cores

AFFINITY = 8


@pytest.fixture(autouse=True)
def _eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process allowed on 8 CPUs, so that each cap below shows, on any machine."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(AFFINITY)))


def _tree(root: Path, cgroup: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = root / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_without_a_quota_auto_counts_the_cpus_this_process_may_run_on(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert usable_cores(root) == AFFINITY
    assert usable_cores(tmp_path / "nothing-here") == AFFINITY


def test_a_cgroup_v2_quota_on_a_parent_caps_auto_rounded_up(tmp_path: Path) -> None:
    # 1.5 CPUs on the parent slice, none on the service itself: 2 cores (a half core
    # is still worth a process), never more than the affinity allows.
    root = _tree(
        tmp_path,
        "0::/system.slice/cm-gateway.service\n",
        {
            "system.slice/cpu.max": "150000 100000\n",
            "system.slice/cm-gateway.service/cpu.max": "max 100000\n",
        },
    )
    assert usable_cores(root) == 2


def test_a_quota_under_one_cpu_still_gives_one_worker(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/\n", {"cpu.max": "20000 100000\n"})
    assert usable_cores(root) == 1


def test_the_affinity_caps_a_larger_quota(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/\n", {"cpu.max": "1600000 100000\n"})
    assert usable_cores(root) == AFFINITY


def test_a_cgroup_v1_cfs_quota_caps_auto(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert usable_cores(root) == 1


def test_an_unreadable_or_garbled_quota_is_no_quota(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/a\nnonsense\n", {"a/cpu.max": "lots\n"})
    assert usable_cores(root) == AFFINITY
