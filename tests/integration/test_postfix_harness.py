"""Phase A: the Postfix harness itself, with a trivial pass-through content filter.

Proves that the deploy/postfix/ snippets route mail through an after-queue filter and
back, and that Postfix queues (4xx) and bounces (5xx) on the filter's word.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.testing import NextHopSink

from .passfilter import PassThroughFilter
from .postfix_harness import (
    PostfixInstance,
    bounce_for,
    make_message,
    postfix_instance,
    postfix_session,
    sink,
    subject_has,
    token,
)

__all__ = ["postfix_instance", "postfix_session", "sink"]

pytestmark = pytest.mark.postfix


@pytest.fixture
def passfilter(postfix_instance: PostfixInstance) -> Iterator[PassThroughFilter]:
    """A pass-through filter on the port Postfix's content_filter points at."""
    f = PassThroughFilter(postfix_instance.filter_port, postfix_instance.reinject_port).start()
    yield f
    f.stop()


def test_mail_passes_through_the_filter_and_arrives_at_the_sink(
    postfix_instance: PostfixInstance, passfilter: PassThroughFilter, sink: NextHopSink
) -> None:
    """A mail sent to the front smtpd reaches the sink via the content filter, envelope intact."""
    word = token()
    msg = make_message(subject=f"hello {word}", body="just a test")
    postfix_instance.send(msg, rcpt_tos=["alice@example.com", "bob@example.net"])
    (got,) = sink.wait_for(where=subject_has(word))
    assert got.header("X-Harness-Filter") == "passed"
    assert got.mail_from == "sender@example.org"
    assert sorted(got.rcpt_tos) == ["alice@example.com", "bob@example.net"]
    assert got.header("Message-ID") == msg["Message-ID"]
    assert passfilter.relayed == 1
    postfix_instance.wait_empty()


def test_filter_451_leaves_mail_deferred_until_the_filter_recovers(
    postfix_instance: PostfixInstance, passfilter: PassThroughFilter, sink: NextHopSink
) -> None:
    """A 451 from the filter keeps the mail in Postfix's deferred queue; it arrives once fixed."""
    word = token()
    passfilter.reply = "451 4.7.1 try again later"
    postfix_instance.send(make_message(subject=f"defer {word}", body="later please"))
    (entry,) = postfix_instance.wait_deferred(reason="451 4.7.1 try again later")
    assert entry.recipients == ("alice@example.com",)
    assert not sink.wait_for(0, where=subject_has(word))
    passfilter.reply = None
    postfix_instance.flush()
    (got,) = sink.wait_for(where=subject_has(word))
    assert got.header("X-Harness-Filter") == "passed"
    postfix_instance.wait_empty()


def test_filter_550_makes_postfix_bounce_to_the_sender(
    postfix_instance: PostfixInstance, passfilter: PassThroughFilter, sink: NextHopSink
) -> None:
    """A 550 from the filter makes Postfix return the mail to its sender, with the reason."""
    word = token()
    passfilter.reply = "550 5.7.1 not wanted here"
    postfix_instance.send(make_message(subject=f"reject {word}", body="go away"))
    (bounce,) = sink.wait_for(where=bounce_for(word))
    assert bounce.rcpt_tos == ("sender@example.org",)
    assert b"550 5.7.1 not wanted here" in bounce.data
    # Postfix's own notifications do not pass the content filter (only mail received
    # by smtpd/pickup/qmqpd gets content_filter), so the filter saw only the original.
    assert bounce.header("X-Harness-Filter") is None
    assert passfilter.refused == 1
    assert passfilter.relayed == 0
    assert not sink.wait_for(0, where=lambda m: not m.is_bounce and word in m.subject)
    postfix_instance.wait_empty()


def test_closed_reinjection_port_defers_mail_until_it_reopens(
    postfix_instance: PostfixInstance, passfilter: PassThroughFilter, sink: NextHopSink
) -> None:
    """The harness can take the filter's next hop (reinjection smtpd) down and back up."""
    word = token()
    postfix_instance.set_reinjection(False)
    postfix_instance.send(make_message(subject=f"hop down {word}", body="hello"))
    (entry,) = postfix_instance.wait_deferred(reason="451 4.4.1 next hop failed")
    assert entry.recipients == ("alice@example.com",)
    postfix_instance.set_reinjection(True)
    postfix_instance.flush()
    (got,) = sink.wait_for(where=subject_has(word))
    assert got.header("X-Harness-Filter") == "passed"
    postfix_instance.wait_empty()


def test_deploy_snippets_use_only_parameters_postfix_knows(
    postfix_instance: PostfixInstance,
) -> None:
    """postconf finds no unknown ("unused") parameter in main.cf/master.cf built from them."""
    assert postfix_instance.postconf_warnings() == []
    master_cf = (postfix_instance.config_dir / "master.cf").read_text()
    assert "\nsmtp-cmgw unix" in master_cf
    assert f"\n127.0.0.1:{postfix_instance.reinject_port} inet" in master_cf


def test_filter_not_listening_keeps_mail_queued_until_it_starts(
    postfix_instance: PostfixInstance, sink: NextHopSink
) -> None:
    """With nothing on the filter port, mail waits in the deferred queue; a flush after
    the filter starts delivers it (the flush revives the destination Postfix marked dead)."""
    word = token()
    postfix_instance.send(make_message(subject=f"no filter {word}", body="hello"))
    (entry,) = postfix_instance.wait_deferred(reason="Connection refused")
    assert entry.recipients == ("alice@example.com",)
    f = PassThroughFilter(postfix_instance.filter_port, postfix_instance.reinject_port).start()
    try:
        postfix_instance.flush()
        (got,) = sink.wait_for(where=subject_has(word), timeout=8)
        assert got.header("X-Harness-Filter") == "passed"
        postfix_instance.wait_empty()
    finally:
        f.stop()
