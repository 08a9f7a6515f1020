"""gateway.testing.NextHopSink over real sockets: what it offers, refuses and records."""

from __future__ import annotations

import smtplib

import pytest

from gateway.testing import XFORWARD_ALL, ReceivedMessage, SinkBehaviour, running_sink

MESSAGE = b"Subject: hello\r\nMessage-ID: <m1@test>\r\n\r\nHi.\r\n"


def test_it_offers_exactly_the_extensions_its_behaviour_names() -> None:
    offers = SinkBehaviour(pipelining=True, smtputf8=False, xforward="NAME ADDR")
    with running_sink(offers) as sink, smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
        c.ehlo("client.test")
        assert c.has_extn("pipelining") and c.has_extn("xforward")
        assert c.esmtp_features["xforward"] == "NAME ADDR"
        assert not c.has_extn("smtputf8")
    with running_sink() as sink, smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
        c.ehlo("client.test")
        assert c.has_extn("smtputf8")
        assert not c.has_extn("pipelining") and not c.has_extn("xforward")


def test_it_records_envelope_bytes_and_xforward_and_refuses_chosen_recipients() -> None:
    behaviour = SinkBehaviour(
        refuse={"bob@x.test": "550 5.1.1 No such user"}, xforward=XFORWARD_ALL
    )
    with running_sink(behaviour) as sink, smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
        c.ehlo("client.test")
        assert c.docmd("XFORWARD", "NAME=mx.example ADDR=192.0.2.1")[0] == 250
        refused = c.sendmail("a@x.test", ["al@x.test", "bob@x.test"], MESSAGE)
        assert refused == {"bob@x.test": (550, b"5.1.1 No such user")}
        (got,) = sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos, got.data) == ("a@x.test", ("al@x.test",), MESSAGE)
    assert got.forwarded == {"NAME": "mx.example", "ADDR": "192.0.2.1"}
    assert sink.verbs() == ["EHLO", "XFORWARD", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]


def test_reply_for_answers_chosen_messages_and_records_only_accepted_ones() -> None:
    def tempfail_first(message: ReceivedMessage) -> str | None:
        return "451 4.3.0 Try again" if message.subject == "first" else None

    with running_sink(SinkBehaviour(reply_for=tempfail_first)) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=30) as c:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                c.sendmail("a@x.test", ["b@x.test"], b"Subject: first\r\n\r\nx\r\n")
            assert refused.value.smtp_code == 451
            c.sendmail("a@x.test", ["b@x.test"], b"Subject: second\r\n\r\nx\r\n")
        assert [m.subject for m in sink.messages] == ["second"]
        assert sink.count("DATA") == 2 and sink.connections == 1


def test_a_stopped_sink_refuses_connections_and_starts_again_on_its_port() -> None:
    with running_sink() as sink:
        port = sink.port
        sink.stop()
        with pytest.raises(OSError):
            smtplib.SMTP(sink.host, port, timeout=5)
        sink.start()
        assert sink.port == port
        with smtplib.SMTP(sink.host, port, timeout=30) as c:
            c.sendmail("a@x.test", ["b@x.test"], MESSAGE)
        assert len(sink.wait_for(1)) == 1
