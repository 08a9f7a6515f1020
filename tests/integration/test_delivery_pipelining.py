"""Delivery to a next hop that offers PIPELINING (RFC 2920), over real sockets: the
envelope arrives in one read, the content with its final dot in another, and every
refusal in the batch means what it meant one command at a time
(tests/integration/pipelining_sink.py records each read as it arrived)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway import replies
from gateway.deliver import XForward
from gateway.deliver._delivery import SmtpDelivery
from gateway.replies import Reply
from gateway.testing import free_port
from tests.real_parts import missing_part

from .pipelining_sink import Script, Sink, running

CONTENT = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\n"
    b".a line starting with a dot\r\n..two\r\n.\r\nlast\r\n"
)
FORWARDED = XForward(name="mx.example.org", addr="192.0.2.7", proto="ESMTP", helo="mx.example.org")


def delivery(sink: Sink, pool_size: int = 1) -> SmtpDelivery:
    return SmtpDelivery(
        "127.0.0.1", sink.port, timeout=20.0, local_hostname="gw.test", pool_size=pool_size
    )


async def test_envelope_in_one_read_content_in_another_and_rset_rides_along_on_reuse() -> None:
    """XFORWARD, MAIL, both RCPTs and DATA arrive in one read; the content with its dot in
    the next; on the reused connection the RSET comes in the same read as the next
    envelope. Both messages arrive once, byte for byte."""
    async with running(Script(xforward=True)) as sink:
        d = delivery(sink)
        first = await d.deliver(
            "a@example.com", ["b@x.test", "c@x.test"], CONTENT, xforward=FORWARDED
        )
        second = await d.deliver("a@example.com", ["d@x.test"], CONTENT, xforward=FORWARDED)
        await d.aclose()
    assert first.delivered and second.delivered
    assert first.queue_id == "Q1" and second.queue_id == "Q2"
    (reads,) = sink.reads.values()
    assert reads[0].startswith(b"EHLO gw.test")
    envelope = reads[1].split(b"\r\n")
    assert [line.split(b" ")[0] for line in envelope] == [
        b"XFORWARD",
        b"MAIL",
        b"RCPT",
        b"RCPT",
        b"DATA",
        b"",
    ]
    assert b"SIZE=" in envelope[1] and b"BODY=8BITMIME" in envelope[1]
    assert reads[2].endswith(b"\r\n.\r\n") and b"..two" in reads[2]
    assert [line.split(b" ")[0] for line in reads[3].split(b"\r\n")] == [
        b"RSET",
        b"XFORWARD",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"",
    ]
    assert [(m.rcpts, m.content) for m in sink.messages] == [
        (("b@x.test", "c@x.test"), CONTENT),
        (("d@x.test",), CONTENT),
    ]
    assert all(m.xforward for m in sink.messages)


async def test_a_large_message_still_goes_in_pieces() -> None:
    """3 MB: more than one write of content, and it arrives intact."""
    big = b"".join(b".line %07d\r\n" % i for i in range(250_000))
    async with running() as sink:
        d = delivery(sink)
        result = await d.deliver("a@example.com", ["b@x.test"], big)
        await d.aclose()
    assert result.delivered
    assert [m.content for m in sink.messages] == [big]


async def test_some_recipients_refused_in_the_batch_is_a_partial_failure() -> None:
    """One RCPT refused among three: 451 with that refusal by address; the message
    arrives once, for the other two; the connection is not reused."""
    script = Script(rcpt_replies={"no@x.test": "550 5.1.1 No such user"})
    async with running(script) as sink:
        d = delivery(sink)
        result = await d.deliver("a@example.com", ["b@x.test", "no@x.test", "c@x.test"], CONTENT)
        stats = d.pool.stats()
        await d.aclose()
    assert result.reply == replies.DOWNSTREAM_PARTIAL
    assert result.refused == {"no@x.test": Reply(550, "5.1.1", "No such user")}
    assert [m.rcpts for m in sink.delivered()] == [("b@x.test", "c@x.test")]
    assert stats["idle"] == 0


@pytest.mark.parametrize("data_reply", [None, "354 go ahead anyway"])
async def test_every_recipient_refused_delivers_nothing_even_if_data_gets_354(
    data_reply: str | None,
) -> None:
    """All RCPTs refused: the 5xx is passed on. A next hop that answers the pipelined
    DATA with 354 regardless gets a lone dot, never the message (RFC 2920 §3.1)."""
    script = Script(rcpt_replies={"no@x.test": "550 5.1.1 No such user"}, data_reply=data_reply)
    async with running(script) as sink:
        d = delivery(sink)
        result = await d.deliver("a@example.com", ["no@x.test"], CONTENT)
        await d.aclose()
    assert result.reply == Reply(550, "5.1.1", "No such user")
    assert sink.delivered() == []
    assert all(m.content == b"" for m in sink.messages)
    assert len(sink.messages) == (1 if data_reply else 0)


async def test_sender_refused_in_the_batch_passes_the_5xx_on() -> None:
    """MAIL FROM refused (the RCPTs and DATA then get 503/554): that 5xx, nothing sent."""
    async with running(Script(mail_reply="553 5.1.8 Sender address rejected")) as sink:
        d = delivery(sink)
        result = await d.deliver("a@example.com", ["b@x.test"], CONTENT)
        await d.aclose()
    assert result.reply == Reply(553, "5.1.8", "Sender address rejected")
    assert sink.messages == []


async def test_recipient_accepted_after_a_refused_sender_and_354_aborts_without_a_dot() -> None:
    """A broken next hop: MAIL refused, RCPT accepted, DATA 354. A dot could deliver an
    empty message, so the connection is dropped instead: nothing arrives."""
    script = Script(
        mail_reply="451 4.3.0 Try later",
        rcpt_replies={"b@x.test": "250 2.1.5 Ok"},
        data_reply="354 go",
    )
    async with running(script) as sink:
        d = delivery(sink)
        result = await d.deliver("a@example.com", ["b@x.test"], CONTENT)
        await d.aclose()
    assert result.reply == replies.DOWNSTREAM_TEMPFAIL
    assert sink.messages == []


@pytest.mark.parametrize(
    ("data_reply", "expected"),
    [
        ("554 5.7.1 Content rejected", Reply(554, "5.7.1", "Content rejected")),
        ("451 4.3.0 Queue file write error", replies.DOWNSTREAM_TEMPFAIL),
    ],
)
async def test_data_refused_in_the_batch(data_reply: str, expected: Reply) -> None:
    """DATA refused: 5xx passed on, 4xx a temporary failure; no content sent."""
    async with running(Script(data_reply=data_reply)) as sink:
        d = delivery(sink)
        result = await d.deliver("a@example.com", ["b@x.test"], CONTENT)
        await d.aclose()
    assert result.reply == expected
    assert sink.messages == []


async def test_final_reply_refused() -> None:
    """The reply after the dot decides, as before."""
    async with running(Script(final_reply="554 5.7.1 Spam")) as sink:
        d = delivery(sink)
        result = await d.deliver("a@example.com", ["b@x.test"], CONTENT)
        await d.aclose()
    assert result.reply == Reply(554, "5.7.1", "Spam")


async def test_refused_xforward_in_the_batch_costs_a_connection_not_the_message() -> None:
    """XFORWARD refused: the transaction behind it (already under way) is dropped before
    its dot, logged, and the message goes once, without XFORWARD, on a fresh connection."""
    script = Script(xforward=True, xforward_reply="501 5.5.4 Bad NAME syntax")
    async with running(script) as sink:
        d = delivery(sink)
        with capture_logs() as logs:
            result = await d.deliver("a@example.com", ["b@x.test"], CONTENT, xforward=FORWARDED)
        stats = d.pool.stats()
        await d.aclose()
    assert result.delivered
    assert [(m.content, m.xforward) for m in sink.messages] == [(CONTENT, ())]
    assert len(sink.reads) == 2 and stats["discarded"] == 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["xforward_refused"]


async def test_refused_rset_on_a_reused_connection_sends_the_message_on_a_fresh_one() -> None:
    """The pipelined RSET in front of the second message is refused: that connection is
    dropped and the message goes, once, on a new connection."""
    async with running(Script(rset_reply_on_reuse="500 5.5.2 Error: confused")) as sink:
        d = delivery(sink)
        first = await d.deliver("a@example.com", ["b@x.test"], CONTENT)
        second = await d.deliver("a@example.com", ["c@x.test"], CONTENT)
        await d.aclose()
    assert first.delivered and second.delivered
    assert [m.rcpts for m in sink.messages] == [("b@x.test",), ("c@x.test",)]
    assert len(sink.reads) == 2


async def test_next_hop_hanging_up_between_messages_costs_no_message() -> None:
    """The pooled connection was closed by the next hop: the pipelined batch fails
    before MAIL FROM is accepted, and the message goes once on a fresh connection."""
    async with running(Script(hang_up_after_message=True)) as sink:
        d = delivery(sink)
        results = [await d.deliver("a@example.com", [f"r{i}@x.test"], CONTENT) for i in range(3)]
        await d.aclose()
    assert all(r.delivered for r in results)
    assert [m.rcpts for m in sink.messages] == [("r0@x.test",), ("r1@x.test",), ("r2@x.test",)]


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    """A next hop that does not offer PIPELINING gets one command per read."""
    async with running(Script(pipelining=False)) as sink:
        d = delivery(sink)
        result = await d.deliver("a@example.com", ["b@x.test", "c@x.test"], CONTENT)
        await d.aclose()
    assert result.delivered
    (reads,) = sink.reads.values()
    assert [r.split(b" ")[0].rstrip(b"\r\n") for r in reads[:5]] == [
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"RCPT",
        b"DATA",
    ]
    assert [m.content for m in sink.messages] == [CONTENT]


async def test_many_concurrent_messages_through_a_pipelining_pool_arrive_once_each() -> None:
    """200 messages, pool of 4: each arrives exactly once."""
    async with running() as sink:
        d = delivery(sink, pool_size=4)
        results = await asyncio.gather(
            *(d.deliver("a@example.com", [f"r{i}@x.test"], CONTENT) for i in range(200))
        )
        await d.aclose()
    assert all(r.delivered for r in results)
    assert sorted(m.rcpts[0] for m in sink.messages) == sorted(f"r{i}@x.test" for i in range(200))
    assert len(sink.reads) <= 4


def _smtp_sink() -> str | None:
    for directory in ("/usr/sbin", "/usr/lib/postfix/sbin"):
        if os.access(f"{directory}/smtp-sink", os.X_OK):
            return f"{directory}/smtp-sink"
    return shutil.which("smtp-sink")


async def test_postfix_smtp_sink_receives_every_message_once() -> None:
    """Postfix's own smtp-sink (which offers PIPELINING) dumps each transaction it
    accepted to a file: 30 messages, 30 files, each with its one recipient."""
    if _smtp_sink() is None:
        missing_part("Postfix's smtp-sink not installed")
    sink_bin = _smtp_sink()
    assert sink_bin is not None
    port = free_port()
    dump_dir = await asyncio.to_thread(_dump_dir)
    argv = [sink_bin, "-d", f"{dump_dir}/%M.", f"127.0.0.1:{port}", "16"]
    if os.geteuid() == 0:
        argv[1:1] = ["-u", "nobody"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        d = SmtpDelivery("127.0.0.1", port, timeout=20.0, local_hostname="gw.test", pool_size=2)
        while True:
            first = await d.deliver("a@example.com", ["r0@x.test"], CONTENT)
            if first.delivered or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        results = [
            await d.deliver("a@example.com", [f"r{i}@x.test"], CONTENT) for i in range(1, 30)
        ]
        await d.aclose()
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert first.delivered, stderr
    assert all(r.delivered for r in results), stderr
    dumps = await asyncio.to_thread(_read_and_remove, dump_dir)
    assert len(dumps) == 30
    for i in range(30):
        assert sum(f"<r{i}@x.test>".encode() in dump for dump in dumps) == 1


def _dump_dir() -> Path:
    dump_dir = Path(tempfile.mkdtemp(prefix="cmgw-smtp-sink-"))
    dump_dir.chmod(0o777)  # smtp-sink runs as nobody when started as root
    return dump_dir


def _read_and_remove(dump_dir: Path) -> list[bytes]:
    dumps = [p.read_bytes() for p in dump_dir.iterdir()]
    shutil.rmtree(dump_dir)
    return dumps
