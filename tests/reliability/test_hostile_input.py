"""Hostile input over SMTP (issue 6 item 2), through a real ``cm-gateway serve`` process.

The gateway classifies with the Communications Mining emulator over HTTP (which
validates every request strictly and counts 400/422 answers) and delivers to a
recording SMTP sink. Every fixture of tests/fixtures/mail and every generated
hostile message is sent; each must be delivered intact (only header lines prepended)
or refused with its documented reply, the emulator must never have refused a request,
and afterwards the same process must still deliver an ordinary message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import replies
from gateway.replies import Reply
from gateway.testing import (
    EmulatorHandle,
    NextHopSink,
    ReceivedMessage,
    SinkBehaviour,
    running_emulator,
)

from .abuse_support import (
    GatewayProcess,
    Hostile,
    added_header_names,
    hostile_messages,
    running_gateway,
    send_message,
    toml_config,
    wire_content,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
RULES = """
rules:
  - name: tag-finance
    when: { label: "Finance > *" }
    actions:
      - add_header: { X-Test-Queue: finance }
  - name: flag-unclassified
    when: { unclassified: true }
    actions:
      - add_header: { X-Needs-Review: "yes" }
"""
# What the gateway may prepend: its trace field, its verdict, and the rules' headers.
ADDED = {"received", "x-test-queue", "x-needs-review"}
# Fixtures the SMTP front refuses, and why (bare LF with bare_lf=reject; a mail loop).
FIXTURE_REFUSALS: dict[str, Reply] = {
    "20-2000-received.eml": replies.LOOP_DETECTED,  # smtp.max_hops
    "23-binary-garbage.eml": replies.BARE_LF,
    "26-bare-lf.eml": replies.BARE_LF,
}
NORMAL = (
    b"From: Alice <alice@example.net>\r\nTo: triage@example.com\r\n"
    b"Subject: Invoice INV-77777 after the storm\r\nMessage-ID: <after@hostile.test>\r\n"
    b"\r\nPlease pay invoice INV-77777.\r\n"
)


@dataclass
class Stack:
    """The emulator, the sink and the gateway process of one run."""

    emulator: EmulatorHandle
    sink: NextHopSink
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Emulator over HTTP + recording sink + a ``cm-gateway serve`` subprocess."""
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "rules.yaml").write_text(RULES, encoding="utf-8")
    sink = NextHopSink(SinkBehaviour(smtputf8=False)).start()
    with running_emulator(token="hostile-test-token") as emu:
        config = toml_config(
            {
                "smtp": {"listen": "127.0.0.1:0", "hostname": "gw.hostile.test", "timeout": 120},
                "downstream": {"url": f"smtp://127.0.0.1:{sink.port}", "timeout": 30},
                "classifier": {
                    "provider": "communications-mining",
                    "base_url": emu.base_url,
                    "project": emu.project,
                    "dataset": emu.dataset,
                    "timeout": 30.0,
                    "max_wait_ms": 0,
                },
                "rules": {"files": [str(tmp / "rules.yaml")]},
                "metrics": {"listen": ""},
                "log": {"level": "info", "format": "json"},
            }
        )
        env = {"REINFER_TOKEN": emu.token or ""}
        try:
            with running_gateway(tmp, config, env=env) as gateway:
                yield Stack(emu, sink, gateway)
        finally:
            sink.stop()


def _corpus() -> list[Hostile]:
    fixtures = [
        Hostile(
            f"fixture {path.name}", path.read_bytes(), refused_with=FIXTURE_REFUSALS.get(path.name)
        )
        for path in sorted(FIXTURES.glob("*.eml"))
    ]
    return fixtures + hostile_messages()


def _delivered(sink: NextHopSink, queue_id: str) -> list[ReceivedMessage]:
    # The gateway's Received field names its queue id: "... id <queue id>".
    return sink.wait_for(1, where=lambda m: f"id {queue_id}".encode() in m.data[:2000], timeout=30)


def _check(stack: Stack, case: Hostile, reply: str) -> str | None:
    """None when ``reply`` (and the delivery) is what the contract says; else why not."""
    if case.refused_with is not None:
        return None if reply == str(case.refused_with) else f"expected {case.refused_with}"
    if not reply.startswith("250 2.0.0 Ok: queued as "):
        return "expected delivery"
    queue_id = reply.rsplit(" ", 1)[1]
    try:
        (got,) = _delivered(stack.sink, queue_id)
    except (TimeoutError, ValueError) as exc:
        return f"delivery check failed: {type(exc).__name__}"
    sent = wire_content(case.content)
    if not got.data.endswith(sent):
        return "body or original headers changed"
    prefix = got.data[: len(got.data) - len(sent)]
    names = added_header_names(prefix)
    foreign = [n for n in names if n not in ADDED and not n.startswith("x-cm-")]
    if foreign:
        return f"unexpected prepended lines {foreign[:3]}"
    status = [line for line in prefix.split(b"\r\n") if line.lower().startswith(b"x-cm-status:")]
    if len(status) != 1 or b"unclassified" in status[0]:
        return f"X-CM-Status {status!r} (the emulator was healthy)"
    if max((len(line) for line in prefix.split(b"\r\n")), default=0) > 998:
        return "a prepended line exceeds 998 octets"
    return None


async def test_hostile_corpus_is_delivered_intact_or_refused_as_documented_and_gateway_survives(
    stack: Stack,
) -> None:
    """48 fixtures + generated hostile mail over SMTP: each delivered intact or refused
    with its documented reply, no classifier request refused, the process still serves."""
    before = stack.emulator.stats()["responses_by_status"]
    table: list[tuple[str, str, str | None, float]] = []
    for case in _corpus():
        start = time.monotonic()
        reply = await asyncio.to_thread(
            send_message, stack.gateway.port, case.content, smtputf8=case.smtputf8
        )
        seconds = time.monotonic() - start
        table.append((case.name, reply, _check(stack, case, reply), seconds))
        assert stack.gateway.alive(), f"gateway died on {case.name}"
    print("\nhostile input over SMTP (case | reply | problem):")
    for name, reply, problem, seconds in table:
        print(f"  {name:44} | {reply[:52]:52} | {seconds:5.2f}s | {problem or 'ok'}")
    assert [row for row in table if row[2] is not None] == []

    after = stack.emulator.stats()
    refused = {k: v for k, v in after["responses_by_status"].items() if k in ("400", "422")}
    assert refused == {}, f"the emulator refused requests: {refused} (before: {before})"
    assert after["documents_billed"] > 0
    reply = await asyncio.to_thread(send_message, stack.gateway.port, NORMAL)
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    assert _check(stack, Hostile("normal", NORMAL), reply) is None
    log = stack.gateway.log_text()
    assert "Traceback" not in log
    assert "processor_error" not in log and "smtp_session_error" not in log
    assert "hostile-test-token" not in log
