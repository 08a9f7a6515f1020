"""Zero-loss chaos run (issue 6, item 1): nothing is lost under fire.

Real Postfix in front (content_filter + reinjection, from deploy/postfix/), the real
gateway as a subprocess, the Communications Mining emulator over HTTP failing 10 % of
calls with 503 and timing out 5 %, the gateway SIGKILLed twice and restarted, its next
hop (Postfix's reinjection listener) closed for 30 s and the final hop (the sink) stopped
for a while, all while mail flows. After Postfix's queue drains, every Message-ID that
Postfix accepted has arrived. Duplicates (a SIGKILL after the next hop's 250 and before
ours reached Postfix) stay within the transactions in flight at each kill, at most
Postfix's maxproc for the gateway; over a long run (the soak) at or under 1 %.

The default run sends ``CMGW_CHAOS_MESSAGES`` messages (300); the soak
(``-m soak``) sends the issue's 2,000 and a 10,000-message run with more faults::

    ./scripts/test tests/reliability/test_chaos.py -s
    ./scripts/test tests/reliability/test_chaos.py -m soak -s

Each report gives the API's load and cost per distinct message: documents sent (failed
calls included), answered, and AI units by the API's rule. ``CMGW_CHAOS_CACHE=sqlite``
or ``redis`` runs the gateway with a dedup cache that survives the kills (``[cache] url``:
a file, or a private redis-server): a message Postfix retries after a kill is not sent
to the API again.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import EmulatorHandle
from tests.integration.postfix_gateway import GatewaySpec
from tests.integration.postfix_harness import postfix_available
from tests.integration.redis_support import running_redis
from tests.real_parts import missing_part

from .chaos_run import ChaosPlan, ChaosReport, run_chaos
from .chaos_support import ChaosGateway, ChaosPostfix, MessageIdSink

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.emulator(
        token="chaos-token", fail_rate=0.15, fail_status="503,503,timeout", seed=6
    ),
]

DEFAULT_MESSAGES = int(os.environ.get("CMGW_CHAOS_MESSAGES", "300"))
# Seen over two kills: 1 / 3 / 3 at f883c39, 2 / 4 / 7 at 7f45144, 9 (3.0 %) at 6636bda on
# a loaded machine: the default run's two kills in 300 messages are far denser than a
# real outage, so its rate is not the promise. The hard bound is the transactions in
# flight at a kill: Postfix's maxproc for the gateway's transport (deploy/postfix).
MASTER_CF = Path(__file__).resolve().parents[2] / "deploy" / "postfix" / "master.cf.snippet"
_MAXPROC = re.search(r"^smtp-cmgw\s+unix(?:\s+\S+){4}\s+(\d+)", MASTER_CF.read_text(), re.M)
assert _MAXPROC is not None, f"no smtp-cmgw line in {MASTER_CF}"
DUPLICATES_PER_KILL = int(_MAXPROC.group(1))
# The README's promise (duplicates <= 1 %) is checked on runs at least this long.
RATE_RUN_MESSAGES = 1000

# Every action that changes routing or headers, none that refuses mail: each message
# must arrive, so a bounce or a missing Message-ID is a loss.
RULES = """
rules:
  - name: invoices-to-ap
    when: { label: "Finance > Invoice", min_probability: 0.5 }
    actions:
      - add_header: { X-Triage-Queue: accounts-payable }
      - redirect: [ap@example.com]
    stop: true
  - name: complaints
    when: { label: "Customer Service > Complaint" }
    actions:
      - prefix_subject: "[Complaint] "
      - bcc: [quality@example.com]
  - name: newsletters
    when: { label: "Notification > Newsletter" }
    actions:
      - quarantine: bulk@example.com
  - name: unclassified-flag
    when: { unclassified: true }
    actions:
      - add_header: { X-Needs-Review: "yes" }
"""


@pytest.fixture(scope="module")
def sink() -> Iterator[MessageIdSink]:
    """The final hop, recording Message-IDs."""
    s = MessageIdSink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def postfix(sink: MessageIdSink) -> Iterator[ChaosPostfix]:
    """A private Postfix with fast retries, delivering everything to ``sink``."""
    reason = postfix_available()
    if reason:
        missing_part(reason)
    instance = ChaosPostfix(sink_port=sink.port)
    try:
        instance.start()
        yield instance
    finally:
        instance.destroy()


@pytest.fixture(scope="module")
def cache_toml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ``[cache]`` section: memory (the default) or, with CMGW_CHAOS_CACHE=sqlite or
    redis, a file or a private redis-server that outlives the gateway's kills."""
    kind = os.environ.get("CMGW_CHAOS_CACHE", "memory")
    if kind == "sqlite":
        yield f'[cache]\nurl = "sqlite://{tmp_path_factory.mktemp("chaos-cache")}/dedup.db"\n'
        return
    if kind != "redis":
        yield ""
        return
    with running_redis(tmp_path_factory.mktemp("chaos-redis")) as server:
        yield f'[cache]\nurl = "{server.url}"\n'


@pytest.fixture
def gateway(postfix: ChaosPostfix, sink: MessageIdSink) -> Iterator[ChaosGateway]:
    """The gateway slot on Postfix's content-filter port; Postfix's queue is empty."""
    postfix.purge()
    runner = ChaosGateway(listen_port=postfix.filter_port, downstream_port=postfix.reinject_port)
    yield runner
    runner.destroy()
    sink.start()
    postfix.set_reinjection(True)
    postfix.purge()


def spec_for(emulator: EmulatorHandle, on_error: str, cache: str = "") -> GatewaySpec:
    """The chaos rules; the classifier is the faulty emulator over HTTP (2 s budget)."""
    return GatewaySpec(
        extra_toml=cache,
        rules=RULES,
        provider="communications-mining",
        base_url=emulator.base_url,
        token=emulator.token or "chaos-token",
        on_error=on_error,
        classifier_timeout=2.0,
    )


def chaos(
    plan: ChaosPlan,
    on_error: str,
    *,
    postfix: ChaosPostfix,
    gateway: ChaosGateway,
    sink: MessageIdSink,
    emulator: EmulatorHandle,
    cache: str = "",
) -> ChaosReport:
    """Run ``plan`` against a gateway with ``on_error``; print and check the report."""
    spec = spec_for(emulator, on_error, cache)
    gateway.ensure(spec)
    emulator.reset()
    report = run_chaos(
        plan,
        postfix=postfix,
        gateway=gateway,
        sink=sink,
        restart=lambda: gateway.ensure(spec),
        run_id=uuid.uuid4().hex[:10],
    )
    stats = emulator.stats()
    faults = stats["faults_by_kind"]
    kind = cache.split('"')[1].partition(":")[0] if cache else "memory"
    print(
        f"\n[{on_error}, {plan.messages} messages, {kind} cache] {report.summary()}\n"
        f"  {cost_line(stats, plan)}"
    )
    assert report.sent == plan.messages
    assert report.missing == [], f"lost {len(report.missing)}: {report.missing[:10]}"
    assert report.bounces == 0 and report.unknown == 0
    # Duplicates come only from a SIGKILL landing after the next hop's 250 and before
    # ours reached Postfix: at most the transactions in that window at the kill (a kill
    # just after the next hop reopens hits the queue flush's burst). The README promises
    # 1 % over a long run; a short one's rate is set by how dense its kills are.
    assert report.duplicates <= DUPLICATES_PER_KILL * report.kills, report.summary()
    if plan.messages >= RATE_RUN_MESSAGES:
        assert report.duplicate_rate <= 0.01, report.summary()
    assert report.kills == len(plan.kills_at)
    assert faults.get("503", 0) > 0 and faults.get("timeout", 0) > 0, faults
    assert set(report.statuses) <= {"classified", "unclassified"}, report.statuses
    # The faults hit flowing mail: Postfix had to retry deliveries to the gateway.
    assert report.deferrals["postfix/cmgw/smtp"] > 0, report.deferrals
    assert gateway.running, f"the gateway died:\n{gateway.log_tail()}"
    # Every failure above was logged somewhere in this log; the token never was.
    assert spec.token not in gateway.log_path.read_text(errors="replace")
    # Re-sent messages (API timeouts, kills, Postfix retries) load the API but are never
    # billed again: the comment id is the Message-ID, and the text does not change.
    assert stats["ai_units"] <= plan.messages, cost_line(stats, plan)
    return report


def cost_line(stats: dict[str, Any], plan: ChaosPlan) -> str:
    """API load and cost per distinct message: documents sent (faulted calls included),
    answered (a 200) and AI units by the created-or-modified rule."""
    n = plan.messages
    return (
        f"API calls {stats['requests']}, faults {stats['faults_by_kind']}; per distinct "
        f"message: documents sent {stats['documents_sent']} ({stats['documents_sent'] / n:.2f}), "
        f"answered {stats['documents_billed']} ({stats['documents_billed'] / n:.2f}), "
        f"AI units {stats['ai_units']} ({stats['ai_units'] / n:.2f})"
    )


@pytest.mark.timeout(600)
def test_chaos_run_loses_no_message_with_on_error_deliver(
    postfix: ChaosPostfix,
    gateway: ChaosGateway,
    sink: MessageIdSink,
    emulator: EmulatorHandle,
    cache_toml: str,
) -> None:
    """Faulty API, two SIGKILLs, next hop and sink down: every accepted message arrives."""
    report = chaos(
        ChaosPlan(messages=DEFAULT_MESSAGES),
        "deliver",
        postfix=postfix,
        gateway=gateway,
        sink=sink,
        emulator=emulator,
        cache=cache_toml,
    )
    assert report.statuses["classified"] > 0


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_2000_messages_lose_nothing_with_on_error_deliver(
    postfix: ChaosPostfix,
    gateway: ChaosGateway,
    sink: MessageIdSink,
    emulator: EmulatorHandle,
    cache_toml: str,
) -> None:
    """The issue's full run: 2,000 messages, two SIGKILLs, next hop down 30 s, no loss."""
    chaos(
        ChaosPlan(
            messages=2000,
            sink_down_at=0.8,
            sink_down_s=30.0,
            drain_timeout=600.0,
            step_timeout=900.0,
        ),
        "deliver",
        postfix=postfix,
        gateway=gateway,
        sink=sink,
        emulator=emulator,
        cache=cache_toml,
    )


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_with_on_error_defer_loses_nothing_and_classifies_everything(
    postfix: ChaosPostfix,
    gateway: ChaosGateway,
    sink: MessageIdSink,
    emulator: EmulatorHandle,
    cache_toml: str,
) -> None:
    """on_error=defer under the same chaos: no loss, and every message arrives classified."""
    report = chaos(
        ChaosPlan(
            messages=1000,
            drain_timeout=600.0,
            step_timeout=900.0,
        ),
        "defer",
        postfix=postfix,
        gateway=gateway,
        sink=sink,
        emulator=emulator,
        cache=cache_toml,
    )
    assert set(report.statuses) == {"classified"}, report.statuses


@pytest.mark.soak
@pytest.mark.timeout(7200)
def test_long_soak_10000_messages_with_four_kills_lose_nothing(
    postfix: ChaosPostfix,
    gateway: ChaosGateway,
    sink: MessageIdSink,
    emulator: EmulatorHandle,
    cache_toml: str,
) -> None:
    """10,000 messages, four SIGKILLs, next hop down 60 s, sink down 30 s: no loss."""
    chaos(
        ChaosPlan(
            messages=10000,
            sessions=8,
            kills_at=(0.1, 0.3, 0.55, 0.85),
            reinjection_down_at=0.45,
            reinjection_down_s=60.0,
            sink_down_at=0.7,
            sink_down_s=30.0,
            drain_timeout=1800.0,
            step_timeout=3600.0,
        ),
        "deliver",
        postfix=postfix,
        gateway=gateway,
        sink=sink,
        emulator=emulator,
        cache=cache_toml,
    )
