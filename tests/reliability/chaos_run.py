"""The zero-loss chaos run's orchestration: send, inject faults, drain, count.

Faults are triggered by progress (distinct Message-IDs at the sink), so a slow machine
shifts them in time, not in meaning: every kill and outage hits mail that is flowing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .chaos_support import (
    ChaosGateway,
    ChaosPostfix,
    Delivery,
    MessageIdSink,
    Submitter,
    chaos_messages,
)

__all__ = ["ChaosPlan", "ChaosReport", "run_chaos"]


@dataclass(frozen=True)
class ChaosPlan:
    """What to send and which faults to inject, at which share of arrived messages.

    Faults at the same share overlap (it saves a run's time): a sink outage starts right
    after a kill (the gateway restarts meanwhile) and before a reinjection outage, and
    ends once both its own time and the reinjection outage are over."""

    messages: int
    sessions: int = 6
    kills_at: tuple[float, ...] = (0.2, 0.7)
    reinjection_down_at: float = 0.45
    reinjection_down_s: float = 30.0
    sink_down_at: float = 0.45
    sink_down_s: float = 20.0
    drain_timeout: float = 240.0
    step_timeout: float = 180.0

    def steps(self) -> list[tuple[float, frozenset[str]]]:
        """The faults grouped by the share of arrivals that triggers them, in order."""
        at: dict[float, set[str]] = {}
        for share in self.kills_at:
            at.setdefault(share, set()).add("kill")
        if self.reinjection_down_s > 0:
            at.setdefault(self.reinjection_down_at, set()).add("reinjection")
        if self.sink_down_s > 0:
            at.setdefault(self.sink_down_at, set()).add("sink")
        return [(share, frozenset(kinds)) for share, kinds in sorted(at.items())]


@dataclass
class ChaosReport:
    """What a chaos run measured."""

    sent: int = 0
    arrived: int = 0
    missing: list[str] = field(default_factory=list)
    deliveries: int = 0
    duplicates: int = 0
    bounces: int = 0
    unknown: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    submit_retries: int = 0
    run_s: float = 0.0
    submit_s: float = 0.0
    drain_s: float = 0.0
    flushes: int = 0
    deferrals: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)

    @property
    def duplicate_rate(self) -> float:
        """Extra deliveries of one message to one recipient, per message sent."""
        return self.duplicates / self.sent if self.sent else 0.0

    def summary(self) -> str:
        """One human-readable block (printed by the tests; ``pytest -s`` shows it)."""
        statuses = ", ".join(f"{k or '(none)'}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"chaos run: sent {self.sent}, arrived {self.arrived}, missing {len(self.missing)}, "
            f"deliveries {self.deliveries}, duplicates {self.duplicates} "
            f"({self.duplicate_rate:.2%}), bounces {self.bounces}, unknown {self.unknown}\n"
            f"  gateway SIGKILLs {self.kills}, submit retries {self.submit_retries}, "
            f"flushes {self.flushes}\n  Postfix deferrals: {dict(self.deferrals)}\n"
            f"  run {self.run_s:.1f} s (submission {self.submit_s:.1f} s, queue drain after "
            f"the last fault {self.drain_s:.1f} s)\n"
            f"  X-CM-Status: {statuses}\n  events: " + "; ".join(self.events)
        )


def run_chaos(
    plan: ChaosPlan,
    *,
    postfix: ChaosPostfix,
    gateway: ChaosGateway,
    sink: MessageIdSink,
    restart: Callable[[], None],
    run_id: str,
) -> ChaosReport:
    """Send ``plan.messages`` through Postfix and the gateway while injecting the plan's
    faults, flush Postfix's queue until it is empty, and count what arrived."""
    report = ChaosReport()
    run = _Run(plan, report, postfix, gateway, sink, restart)
    try:
        run.execute(run_id)
    except BaseException as exc:
        exc.add_note(f"chaos events: {'; '.join(report.events)}")
        exc.add_note(f"gateway log tail:\n{gateway.log_tail(15)}")
        raise
    return report


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"chaos run: timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


class _Run:
    def __init__(
        self,
        plan: ChaosPlan,
        report: ChaosReport,
        postfix: ChaosPostfix,
        gateway: ChaosGateway,
        sink: MessageIdSink,
        restart: Callable[[], None],
    ) -> None:
        self.plan = plan
        self.report = report
        self.postfix = postfix
        self.gateway = gateway
        self.sink = sink
        self.restart = restart
        self.t0 = time.monotonic()

    def note(self, event: str) -> None:
        self.report.events.append(f"{time.monotonic() - self.t0:.0f}s {event}")
        print(f"  chaos {self.report.events[-1]}", flush=True)

    def execute(self, run_id: str) -> None:
        plan, report, sink = self.plan, self.report, self.sink
        messages = chaos_messages(run_id, plan.messages)
        sink.clear()
        log_offset = self.postfix.maillog_size()
        self.t0 = time.monotonic()
        submitter = Submitter(self.postfix.front_port, messages, plan.sessions).start()
        for share, kinds in plan.steps():
            target = int(share * plan.messages)
            _wait(lambda: sink.arrived() >= target, plan.step_timeout, f"{target} arrivals")  # noqa: B023
            self.inject(kinds)
        last_fault = time.monotonic()
        submitter.join(plan.step_timeout)
        report.submit_s = submitter.finished_at - self.t0
        assert not submitter.failures, f"Postfix refused submissions: {submitter.failures[:5]}"
        self.note(f"faults over, submission done, {sink.arrived()} arrived; draining")
        _wait(self.drained, plan.drain_timeout, "Postfix's queue to drain")
        end = time.monotonic()
        self.note(f"queue empty, {sink.arrived()} arrived")
        report.run_s = end - self.t0
        report.drain_s = end - max(last_fault, submitter.finished_at)
        report.kills = self.gateway.kills
        report.submit_retries = submitter.retries
        report.deferrals = self.postfix.deferrals_since(log_offset)
        _tally(report, {mid for mid, _ in messages}, set(submitter.accepted), sink.deliveries)

    def inject(self, kinds: frozenset[str]) -> None:
        arrived = self.sink.arrived()
        sink_back_at = 0.0
        if "kill" in kinds:
            self.gateway.kill()
            self.note(f"SIGKILL gateway at {arrived} arrived")
        if "sink" in kinds:
            self.sink.stop()
            sink_back_at = time.monotonic() + self.plan.sink_down_s
            self.note(f"sink stopped at {arrived} arrived")
        if "kill" in kinds:
            self.restart()
            self.note("gateway restarted")
        if "reinjection" in kinds:
            self.postfix.set_reinjection(False)
            self.note(f"reinjection closed at {arrived} arrived")
            try:
                time.sleep(self.plan.reinjection_down_s)
            finally:
                self.postfix.set_reinjection(True)
            self.note("reinjection open")
        if "sink" in kinds:
            time.sleep(max(0.0, sink_back_at - time.monotonic()))
            self.sink.start()
            self.note("sink started")

    def drained(self) -> bool:
        # An empty queue is the end: every message was delivered or bounced (the gateway
        # holds nothing; Postfix keeps each message until the gateway's reply).
        if not self.postfix.queue():
            return True
        self.report.flushes += 1
        self.postfix.flush()
        time.sleep(4.0)
        return False


def _tally(
    report: ChaosReport, expected: set[str], accepted: set[str], deliveries: list[Delivery]
) -> None:
    """Count arrivals per Message-ID and duplicates per (Message-ID, recipient)."""
    per_recipient: Counter[tuple[str, str]] = Counter()
    first_status: dict[str, str] = {}
    for d in deliveries:
        if d.mail_from == "":
            report.bounces += 1
            continue
        if d.message_id not in expected:
            report.unknown += 1
            continue
        first_status.setdefault(d.message_id, d.status.split(";")[0])
        for rcpt in d.rcpt_tos:
            per_recipient[(d.message_id, rcpt)] += 1
    report.sent = len(accepted)
    report.deliveries = len(deliveries)
    report.arrived = len(first_status)
    report.missing = sorted(accepted - set(first_status))
    report.duplicates = sum(n - 1 for n in per_recipient.values())
    report.statuses = Counter(first_status.values())
