"""Rule hot reload for ``cm-gateway serve`` (a file that does not validate keeps the old rules).

Two triggers, one path: SIGHUP, and a poll of the rule files' mtime and size every
``POLL_INTERVAL`` seconds (always on; a stat per file, no new dependency). Both call
``Pipeline.reload_rules``, which builds the new ``RuleSet`` completely and then swaps one
reference; a file that does not validate keeps the old rules, logs one
``rules_reload_failed`` line (file, ``line:column``) and counts in
``Pipeline.reload_failures``.

The set of rule files is the one the config named at start-up; the config itself is not
reloaded (restart for that). The list files the rules name (``lists:``) are watched too,
and a change of one reloads like a change of a rule file. A failed reload is not
retried until a file changes again.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["POLL_INTERVAL", "Reloadable", "RuleReloader", "files_signature"]

POLL_INTERVAL = 2.0

Signature = tuple[tuple[int, int] | None, ...]


class Reloadable(Protocol):
    """What the reloader needs of the pipeline."""

    def rule_paths(self) -> list[Path]:
        """The files to watch: rule files and the list files they name."""
        ...

    def reload_rules(self, *, trigger: str) -> bool: ...


def files_signature(paths: Sequence[Path]) -> Signature:
    """(mtime_ns, size) per file, ``None`` for a file that cannot be stat'ed."""
    out: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class RuleReloader:
    """SIGHUP handler and file poll for one pipeline."""

    def __init__(self, target: Reloadable, *, interval: float = POLL_INTERVAL) -> None:
        self._target = target
        self._paths = target.rule_paths()
        self._interval = interval
        self._seen = files_signature(self._paths)

    def reload(self, trigger: str = "sighup") -> bool:
        """Reload now; True when the new rules are in use."""
        # Taken before loading: a write that lands during the load is seen by the next poll.
        self._seen = files_signature(self._paths)
        done = self._target.reload_rules(trigger=trigger)
        paths = self._target.rule_paths()
        if paths != self._paths:  # the new rules name other list files: watch those
            self._paths = paths
            self._seen = files_signature(paths)
        return done

    def poll(self) -> bool | None:
        """Reload when a file's mtime or size changed; None when nothing changed."""
        if files_signature(self._paths) == self._seen:
            return None
        return self.reload("file-changed")

    async def watch(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            await asyncio.sleep(self._interval)
            self.poll()
