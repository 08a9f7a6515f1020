"""XFORWARD with real Postfix: client (from 127.0.0.2) -> Postfix front smtpd -> the
gateway (``xforward_networks = ["127.0.0.0/8"]``, so Postfix's smtp-cmgw client gets
XFORWARD offered) -> Postfix reinjection smtpd (which logs ``orig_queue_id=`` and
``orig_client=`` for XFORWARDed sessions) -> sink. One queue id can be followed from
Postfix's front line through the gateway's message line to the reinjection line."""

from __future__ import annotations

import json
import re
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.testing import NextHopSink

from .postfix_gateway import GatewayRunner, GatewaySpec
from .postfix_harness import (
    PostfixInstance,
    make_message,
    postfix_instance,
    postfix_session,
    sink,
    token,
    wait_until,
)

__all__ = ["postfix_instance", "postfix_session", "sink"]

pytestmark = pytest.mark.postfix

ORIGIN_IP = "127.0.0.2"  # any loopback address but the gateway's own 127.0.0.1
RULES = """
rules:
  - name: invoices-tagged
    when: { label: "Finance > Invoice" }
    actions:
      - add_header: { X-Triage-Queue: accounts-payable }
"""
SPEC = GatewaySpec(rules=RULES)  # trusted_networks = [], xforward_networks = loopback


@pytest.fixture(scope="module")
def gateway(postfix_session: PostfixInstance) -> Iterator[GatewayRunner]:
    """The gateway on Postfix's content-filter port, trusting loopback."""
    runner = GatewayRunner(
        listen_port=postfix_session.filter_port, downstream_port=postfix_session.reinject_port
    )
    yield runner
    runner.destroy()


def _gateway_messages(runner: GatewayRunner) -> list[dict[str, Any]]:
    found = []
    for line in runner.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "message":
            found.append(entry)
    return found


def test_original_client_and_queue_id_reach_the_gateway_log_and_postfix_reinjection(
    postfix_instance: PostfixInstance, gateway: GatewayRunner, sink: NextHopSink
) -> None:
    """Postfix XFORWARDs the original client to the gateway, which logs it and passes it
    on: the reinjection smtpd logs orig_queue_id = the front queue id and orig_client =
    127.0.0.2 while its own client is the gateway (127.0.0.1)."""
    gateway.ensure(SPEC)
    word = token()
    msg = make_message(subject=f"Invoice {word}", body="Please pay the attached invoice.")
    with smtplib.SMTP(
        "127.0.0.1", postfix_instance.front_port, timeout=30, source_address=(ORIGIN_IP, 0)
    ) as client:
        client.ehlo("origin.harness.test")
        assert not client.sendmail("sender@example.org", ["alice@example.com"], msg.as_bytes())
    (got,) = sink.wait_for(where=lambda m: not m.is_bounce and word in m.subject)
    assert got.header("X-CM-Status") == "classified"
    postfix_instance.wait_empty()

    front = re.compile(r"postfix/smtpd\[\d+\]: ([0-9A-Za-z]+): client=\S*\[127\.0\.0\.2\]")
    reinject = re.compile(
        r"postfix/cmgw-reinject/smtpd\[\d+\]: [0-9A-Za-z]+: client=(\S+), "
        r"orig_queue_id=([0-9A-Za-z]+), orig_client=(\S+)"
    )

    def log_lines() -> tuple[str, list[tuple[str, str, str]]] | None:
        text = postfix_instance.maillog.read_text(errors="replace")
        ids = front.findall(text)
        if not ids:
            return None
        ours = [m for m in reinject.findall(text) if m[1] == ids[-1]]
        return (ids[-1], ours) if ours else None

    front_id, ((client, orig_id, orig_client),) = wait_until(
        log_lines, timeout=20, what="the reinjection smtpd's orig_queue_id line"
    )
    assert orig_id == front_id
    assert orig_client.endswith(f"[{ORIGIN_IP}]"), orig_client
    assert client.endswith("[127.0.0.1]"), client

    (line,) = [m for m in _gateway_messages(gateway) if m.get("upstream_queue_id") == front_id]
    assert line["client_addr"] == ORIGIN_IP
    assert line["peer"] == "127.0.0.1"
    assert line["reply"].startswith("250")
