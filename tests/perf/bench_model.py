"""The throughput benchmark's data: what to run (``Options``) and what one run of one
system measured (``SystemFigures``), gathered in a ``Report``."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .bigmail import BigMailResult
from .systems import GatewaySettings

__all__ = ["BASELINE", "BEFORE", "HOLD", "Options", "Report", "SystemFigures"]

BASELINE = "baseline"
# The baseline relay holding each message for the emulator's latency (baseline_relay.py
# --hold-ms): how near a relay that only waits gets to the closed loop's bound.
HOLD = "hold-relay"
# --defaults --before: the gateway with the defaults before issue 20, spelled out.
BEFORE = "gateway-before"


@dataclass(frozen=True)
class Options:
    """What one benchmark invocation does."""

    messages: int = 5000
    sessions: int = 50
    size: int = 4096
    latency_ms: float = 100.0
    runs: int = 3
    tempfail: float = 0.2
    billing_messages: int = 1000
    half_load_messages: int = 1000
    workers: tuple[int | str, ...] = (1,)
    big_mb: float = 25.0
    hold: bool = True
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    log_dir: Path | None = None
    # --defaults: the gateway with no tuning key at all (only max_connections, sized for
    # the sessions); with ``before`` also the defaults before issue 20, spelled out.
    defaults: bool = False
    before: bool = False


@dataclass
class SystemFigures:
    """One system in one run."""

    name: str
    msgs_s: float
    cpu_ms_per_msg: float
    api_per_msg: float
    billed_per_msg: float
    half_rate: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    failed: int = 0
    # smtp-sink's own p99 at half_rate, driven straight (no relay in between).
    direct_p99_ms: float = float("nan")
    # The emulator's ledger: documents sent (failed calls included) and AI units (the
    # API's rule: a message re-sent with the same text costs nothing), per message.
    sent_per_msg: float = float("nan")
    units_per_msg: float = float("nan")
    # One message alone at idle: its DATA time (median of a few), and the sink's own.
    idle_ms: float = float("nan")
    direct_idle_ms: float = float("nan")

    @property
    def added_p99_ms(self) -> float:
        """What this system adds to the p99 at half its peak rate."""
        return self.p99_ms - self.direct_p99_ms

    @property
    def idle_added_ms(self) -> float:
        """What this system adds to one message alone at idle."""
        return self.idle_ms - self.direct_idle_ms


@dataclass
class Report:
    """Every run's figures, and the medians."""

    options: Options
    runs: list[list[SystemFigures]] = field(default_factory=list)
    # Per gateway system: one billing phase per run.
    billing: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    big: BigMailResult | None = None

    def median(self, name: str, attr: str) -> float:
        """The median of one figure of one system over the runs."""
        values = [getattr(f, attr) for run in self.runs for f in run if f.name == name]
        return statistics.median(values) if values else float("nan")

    def run_ratios(self, name: str) -> list[float]:
        """``name``'s msgs/s over the baseline's, run by run (each run's own baseline)."""
        out = []
        for run in self.runs:
            by = {f.name: f.msgs_s for f in run}
            if name in by and by.get(BASELINE):
                out.append(by[name] / by[BASELINE])
        return out

    def names(self) -> list[str]:
        """The systems, in the order they ran."""
        return [f.name for f in self.runs[0]] if self.runs else []
