"""The ``hold`` rule action in the SMTP front behind the shipped Postfix configuration
(deploy/postfix/): the gateway writes ``X-CM-Hold``, the reinjection path's own cleanup
(``cmgw-cleanup``, header_checks ``/^X-CM-Hold:/ HOLD``) puts the message in the hold
queue, and ``postsuper -H`` releases it to its recipients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.testing import NextHopSink

from .postfix_gateway import GatewayRunner, GatewaySpec
from .postfix_harness import (
    POSTSUPER,
    PostfixInstance,
    postfix_instance,
    postfix_session,
    sink,
    token,
    wait_until,
)

__all__ = ["postfix_instance", "postfix_session", "sink"]

pytestmark = pytest.mark.postfix

RULES = """
rules:
  - name: hold-on-request
    when: { header: { name: Subject, contains: "please hold" } }
    actions:
      - hold: "held for review"
"""


@pytest.fixture(scope="module")
def gateway(postfix_session: PostfixInstance) -> Iterator[GatewayRunner]:
    runner = GatewayRunner(
        listen_port=postfix_session.filter_port, downstream_port=postfix_session.reinject_port
    )
    yield runner
    runner.destroy()


def test_hold_in_the_smtp_front_lands_in_postfixs_hold_queue_until_released(
    postfix_instance: PostfixInstance, gateway: GatewayRunner, sink: NextHopSink
) -> None:
    gateway.ensure(GatewaySpec(rules=RULES))
    word = token()
    postfix_instance.send_swaks(subject=f"please hold {word}", body="Lunch at noon?")
    held = wait_until(
        lambda: [e for e in postfix_instance.queue() if e.queue_name == "hold"],
        timeout=20,
        what="a message in the hold queue",
    )
    assert [m for m in sink.messages if word in m.subject] == []
    (entry,) = held
    postfix_instance._run(POSTSUPER, "-c", str(postfix_instance.config_dir), "-H", entry.queue_id)
    postfix_instance.flush()
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert got.header("X-CM-Hold") == "hold-on-request: held for review"
    assert got.rcpt_tos == ("alice@example.com",)
    assert "cmgw-cleanup" in postfix_instance.maillog.read_text(errors="replace")


def test_mail_without_hold_is_not_held_by_the_reinjection_cleanup(
    postfix_instance: PostfixInstance, gateway: GatewayRunner, sink: NextHopSink
) -> None:
    gateway.ensure(GatewaySpec(rules=RULES))
    word = token()
    postfix_instance.send_swaks(subject=f"lunch {word}", body="Lunch at noon?")
    (got,) = sink.wait_for(where=lambda m: word in m.subject)
    assert got.headers("X-CM-Hold") == []
