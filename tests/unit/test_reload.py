"""``gateway.ops._reload``: the mtime/size poll and the reload it triggers."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.ops._reload import RuleReloader, files_signature


class _Target:
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.triggers: list[str] = []

    def rule_paths(self) -> list[Path]:
        return self.paths

    def reload_rules(self, *, trigger: str) -> bool:
        self.triggers.append(trigger)
        return True


def _touch(path: Path, text: str, stamp: float) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (stamp, stamp))


def test_poll_reloads_once_per_change_of_mtime_or_size(tmp_path: Path) -> None:
    """An unchanged file is not reloaded; each change is reloaded once."""
    rules = tmp_path / "rules.yaml"
    _touch(rules, "rules: []\n", 1_000_000)
    target = _Target([rules])
    reloader = RuleReloader(target)
    assert reloader.poll() is None
    _touch(rules, "rules: []\n", 1_000_100)
    assert reloader.poll() is True
    assert reloader.poll() is None
    _touch(rules, "rules: [ ]\n", 1_000_100)  # same mtime, other size
    assert reloader.poll() is True
    assert target.triggers == ["file-changed", "file-changed"]


def test_sighup_reload_resets_the_poll(tmp_path: Path) -> None:
    """A change already loaded by SIGHUP is not loaded again by the next poll."""
    rules = tmp_path / "rules.yaml"
    _touch(rules, "rules: []\n", 1_000_000)
    target = _Target([rules])
    reloader = RuleReloader(target)
    _touch(rules, "rules: []\n", 1_000_200)
    assert reloader.reload() is True
    assert reloader.poll() is None
    assert target.triggers == ["sighup"]


def test_missing_file_counts_as_a_change(tmp_path: Path) -> None:
    """A deleted rule file changes the signature (the reload then reports it)."""
    rules = tmp_path / "rules.yaml"
    _touch(rules, "rules: []\n", 1_000_000)
    before = files_signature([rules])
    rules.unlink()
    assert files_signature([rules]) == (None,)
    assert files_signature([rules]) != before
