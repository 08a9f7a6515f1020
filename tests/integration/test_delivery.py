"""Delivery to the next hop over real sockets (an aiosmtpd sink) and into a Maildir."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway import replies
from gateway.config import Config, load_config
from gateway.deliver import make_delivery
from gateway.deliver._delivery import SmtpDelivery
from gateway.deliver._maildir import MaildirDelivery
from gateway.deliver._result import parse_reply
from gateway.replies import Reply
from gateway.testing import SinkBehaviour, free_port, running_sink

CONTENT = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"\r\n"
    b"8-bit body: caf\xc3\xa9\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"last line\r\n"
)


def smtp(port: int, timeout: float = 5.0) -> SmtpDelivery:
    return SmtpDelivery("127.0.0.1", port, timeout=timeout, local_hostname="gw.test")


async def test_accepted_message_arrives_byte_for_byte_with_8bitmime() -> None:
    """All accepted: 250 with the next hop's queue id; bytes and BODY=8BITMIME carried."""
    with running_sink() as sink:
        result = await smtp(sink.port).deliver(
            "alice@example.com", ["bob@example.com", "carol@example.com"], CONTENT
        )
    assert result.delivered
    assert result.reply == Reply(250, "2.0.0", "Ok: queued as SINK42")
    assert result.queue_id == "SINK42"
    assert result.refused == {}
    (got,) = sink.received
    assert got.content == CONTENT
    assert got.rcpt_tos == ("bob@example.com", "carol@example.com")
    assert "BODY=8BITMIME" in got.mail_options
    assert "SMTPUTF8" not in got.mail_options


async def test_null_sender_is_relayed_as_null() -> None:
    """A bounce (MAIL FROM:<>) keeps its null sender."""
    with running_sink() as sink:
        result = await smtp(sink.port).deliver("", ["bob@example.com"], CONTENT)
    assert result.delivered
    assert sink.received[0].mail_from == "<>"  # aiosmtpd records the null path as "<>"


async def test_smtputf8_session_is_carried_when_the_next_hop_supports_it() -> None:
    """An inbound SMTPUTF8 session is relayed with SMTPUTF8."""
    with running_sink() as sink:
        result = await smtp(sink.port).deliver(
            "alice@example.com", ["bob@example.com"], CONTENT, smtp_utf8=True
        )
    assert result.delivered
    assert "SMTPUTF8" in sink.received[0].mail_options


async def test_non_ascii_envelope_requires_smtputf8() -> None:
    """A UTF-8 recipient is sent with SMTPUTF8 and arrives as UTF-8."""
    with running_sink() as sink:
        result = await smtp(sink.port).deliver("alice@example.com", ["jürgen@example.de"], CONTENT)
    assert result.delivered
    assert sink.received[0].rcpt_tos == ("jürgen@example.de",)
    assert "SMTPUTF8" in sink.received[0].mail_options


async def test_non_ascii_envelope_to_a_next_hop_without_smtputf8_is_refused() -> None:
    """A UTF-8 address cannot go to a next hop lacking SMTPUTF8: 554 5.6.7, nothing sent."""
    with running_sink(SinkBehaviour(smtputf8=False)) as sink:
        result = await smtp(sink.port).deliver("alice@example.com", ["jürgen@example.de"], CONTENT)
    assert result.reply == replies.DOWNSTREAM_NO_SMTPUTF8
    assert sink.received == []


async def test_ascii_envelope_of_an_smtputf8_session_downgrades_gracefully() -> None:
    """An SMTPUTF8 session with ASCII addresses still reaches a next hop without SMTPUTF8."""
    with running_sink(SinkBehaviour(smtputf8=False)) as sink:
        result = await smtp(sink.port).deliver(
            "alice@example.com", ["bob@example.com"], CONTENT, smtp_utf8=True
        )
    assert result.delivered
    assert "SMTPUTF8" not in sink.received[0].mail_options


async def test_some_recipients_refused_is_a_temporary_failure() -> None:
    """One refused recipient out of two: 451 (partial), so the sender retries all of them."""
    behaviour = SinkBehaviour(refuse={"nouser@example.com": "550 5.1.1 No such user"})
    with running_sink(behaviour) as sink:
        result = await smtp(sink.port).deliver(
            "alice@example.com", ["bob@example.com", "nouser@example.com"], CONTENT
        )
    assert result.reply == replies.DOWNSTREAM_PARTIAL
    assert result.refused == {"nouser@example.com": Reply(550, "5.1.1", "No such user")}
    assert result.next_hop is not None and result.next_hop.code == 250
    assert [r.rcpt_tos for r in sink.received] == [("bob@example.com",)]


async def test_every_recipient_refused_permanently_passes_the_5xx_on() -> None:
    """All recipients refused with 5xx: the next hop's code and enhanced code come back."""
    behaviour = SinkBehaviour(
        refuse={
            "a@example.com": "550 5.1.1 No such user",
            "b@example.com": "553 5.1.3 Bad address",
        }
    )
    with running_sink(behaviour) as sink:
        result = await smtp(sink.port).deliver(
            "alice@example.com", ["a@example.com", "b@example.com"], CONTENT
        )
    assert result.reply == Reply(550, "5.1.1", "No such user")
    assert set(result.refused) == {"a@example.com", "b@example.com"}
    assert sink.received == []


@pytest.mark.parametrize(
    "refusals",
    [
        {"a@example.com": "451 4.3.0 Try later"},
        {"a@example.com": "550 5.1.1 No such user", "b@example.com": "452 4.2.2 Mailbox full"},
    ],
)
async def test_every_recipient_refused_with_any_4xx_is_a_temporary_failure(
    refusals: dict[str, str],
) -> None:
    """All refused, at least one temporarily: 451, the sender keeps the message."""
    with running_sink(SinkBehaviour(refuse=refusals)) as sink:
        result = await smtp(sink.port).deliver("alice@example.com", list(refusals), CONTENT)
    assert result.reply == replies.DOWNSTREAM_TEMPFAIL


async def test_data_refused_permanently_passes_the_5xx_on() -> None:
    """DATA answered 554 5.7.1: that is the reply."""
    with running_sink(SinkBehaviour(data_reply="554 5.7.1 Content rejected")) as sink:
        result = await smtp(sink.port).deliver("alice@example.com", ["bob@example.com"], CONTENT)
    assert result.reply == Reply(554, "5.7.1", "Content rejected")


async def test_data_refused_temporarily_is_a_temporary_failure() -> None:
    """DATA answered 451: 451 4.4.1, with the next hop's reply kept for the log."""
    with running_sink(SinkBehaviour(data_reply="451 4.3.0 Queue file write error")) as sink:
        result = await smtp(sink.port).deliver("alice@example.com", ["bob@example.com"], CONTENT)
    assert result.reply == replies.DOWNSTREAM_TEMPFAIL
    assert result.next_hop == Reply(451, "4.3.0", "Queue file write error")


async def test_next_hop_down_is_a_temporary_failure() -> None:
    """Connection refused: 451 4.4.1."""
    result = await smtp(free_port()).deliver("alice@example.com", ["bob@example.com"], CONTENT)
    assert result.reply == replies.DOWNSTREAM_TEMPFAIL
    assert result.error


async def test_next_hop_too_slow_is_a_temporary_failure_within_the_timeout() -> None:
    """A next hop that stalls past downstream.timeout: 451 4.4.1, on time."""
    with running_sink(SinkBehaviour(data_delay=3.0)) as sink:
        started = time.monotonic()
        result = await smtp(sink.port, timeout=0.5).deliver(
            "alice@example.com", ["bob@example.com"], CONTENT
        )
        elapsed = time.monotonic() - started
    assert result.reply == replies.DOWNSTREAM_TEMPFAIL
    assert elapsed < 2.5


def test_parse_reply_takes_the_enhanced_code_of_the_same_class_only() -> None:
    """'550 4.1.1 x' gets 5.0.0; line breaks in the text are flattened."""
    assert parse_reply(550, "5.1.1 No such\r\nuser") == Reply(550, "5.1.1", "No such user")
    assert parse_reply(550, "4.1.1 odd") == Reply(550, "5.0.0", "4.1.1 odd")
    assert parse_reply(250, "OK") == Reply(250, "2.0.0", "OK")


async def test_maildir_delivery_writes_into_new_and_leaves_tmp_empty(tmp_path: Path) -> None:
    """The message lands in new/ byte for byte under the envelope (Return-Path, one
    Delivered-To per recipient); tmp/ is empty; cur/ exists."""
    maildir = tmp_path / "mail"
    rcpts = ["b@x.test", "c@x.test"]
    result = await MaildirDelivery(maildir).deliver("alice@example.com", rcpts, CONTENT)
    assert result.delivered
    files = list((maildir / "new").iterdir())
    assert len(files) == 1
    eol = b"\r\n" if b"\r\n" in CONTENT else b"\n"
    envelope = b"Return-Path: <alice@example.com>%sDelivered-To: b@x.test%sDelivered-To: c@x.test%s"
    assert files[0].read_bytes() == envelope % (eol, eol, eol) + CONTENT
    assert result.reply == replies.queued(files[0].name)
    assert list((maildir / "tmp").iterdir()) == []
    assert (maildir / "cur").is_dir()


async def test_maildir_delivery_names_the_original_recipients_once_each(tmp_path: Path) -> None:
    """X-Original-To per recipient the client gave (a repeated one once), between
    Return-Path and the Delivered-To lines, as Postfix's local delivery writes them."""
    result = await MaildirDelivery(tmp_path).deliver(
        "alice@example.com",
        ["team@x.test"],
        CONTENT,
        original_rcpts=["b@x.test", "c@x.test", "b@x.test"],
    )
    assert result.delivered
    (stored,) = (tmp_path / "new").iterdir()
    eol = b"\r\n" if b"\r\n" in CONTENT else b"\n"
    head = eol.join(
        [
            b"Return-Path: <alice@example.com>",
            b"X-Original-To: b@x.test",
            b"X-Original-To: c@x.test",
            b"Delivered-To: team@x.test",
        ]
    )
    assert stored.read_bytes() == head + eol + CONTENT


async def test_maildir_names_are_unique(tmp_path: Path) -> None:
    """Many deliveries in the same instant never overwrite each other."""
    delivery = MaildirDelivery(tmp_path)
    for _ in range(20):
        await delivery.deliver("a@x.test", ["b@x.test"], CONTENT)
    assert len(list((tmp_path / "new").iterdir())) == 20


async def test_maildir_that_cannot_be_written_is_a_temporary_failure(tmp_path: Path) -> None:
    """A Maildir path that is a file: 451, so the sender keeps the message."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = await MaildirDelivery(blocker).deliver("a@x.test", ["b@x.test"], CONTENT)
    assert result.reply == replies.DOWNSTREAM_TEMPFAIL


def _config(url: str) -> Config:
    return load_config(None, env={"CM_GATEWAY_DOWNSTREAM_URL": url})


def test_make_delivery_follows_the_downstream_url(tmp_path: Path) -> None:
    """smtp:// gives an SMTP relay, maildir:// a Maildir."""
    assert make_delivery(_config("smtp://127.0.0.1:10026")).description == (
        "smtp://127.0.0.1:10026"
    )
    maildir = make_delivery(_config(f"maildir://{tmp_path}"))
    assert isinstance(maildir, MaildirDelivery)
    assert maildir.path == tmp_path
