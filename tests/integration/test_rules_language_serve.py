"""The rule language additions through a real ``cm-gateway serve`` (in-process emulator
model, a real SMTP next hop): a reply follows its conversation even though its label
alone routes it elsewhere (memory cache, and across two instances with Redis); a list
file names the VIPs and a change of it reloads the rules; ``remove_header`` removes
every instance; ``time`` sees the moment the message is processed."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.testing import NextHopSink, ReceivedMessage

from .redis_support import RedisServer, redis_server
from .serve_support import free_port, read_until, start_serve, stop_serve

__all__ = ["redis_server"]  # the fixture, imported for pytest

RULES = """\
lists:
  vip: lists/vip.txt
rules:
  - name: strip-spam-flag
    when: { header: { name: X-Spam-Flag, exists: true } }
    actions: [{ remove_header: X-Spam-Flag }]
  - name: vip-tag
    when: { from: { list: vip } }
    actions: [{ add_header: { X-VIP: "yes" } }]
  - name: morning-utc
    when: { time: { between: "00:00-12:00", tz: UTC } }
    actions: [{ add_header: { X-Half: am } }]
  - name: afternoon-utc
    when: { not: { time: { between: "00:00-12:00", tz: UTC } } }
    actions: [{ add_header: { X-Half: pm } }]
  - name: conversation-stays-with-ap
    when: { thread: { matched: invoices-to-ap } }
    actions: [{ add_header: { X-Queue: ap-thread } }, { redirect: [ap@example.com] }]
    stop: true
  - name: refunds-to-refunds
    when: { label: "Finance > Refund", min_probability: 0.5 }
    actions: [{ add_header: { X-Queue: refunds } }, { redirect: [refunds@example.com] }]
    stop: true
  - name: invoices-to-ap
    when: { label: "Finance > Invoice", min_probability: 0.5 }
    actions: [{ add_header: { X-Queue: ap } }, { redirect: [ap@example.com] }]
    stop: true
"""

INVOICE = (
    "From: Carol <carol@example.org>\r\nTo: info@example.com\r\n"
    "Subject: Invoice INV-2041 overdue\r\nMessage-ID: <{id}@example.org>\r\n"
    "X-Spam-Flag: NO\r\nx-spam-flag: maybe\r\n\r\n"
    "Please pay invoice INV-2041, the invoice is overdue.\r\n"
)
REFUND_REPLY = (
    "From: Carol <carol@example.org>\r\nTo: info@example.com\r\n"
    "Subject: Re: overdue payment\r\nMessage-ID: <{id}-reply@example.org>\r\n"
    "{thread}\r\n"
    "Thanks. Actually I want a refund, please reimburse me, I want my money back.\r\n"
)


@pytest.fixture
def sink() -> Iterator[NextHopSink]:
    """The next hop."""
    sink = NextHopSink().start()
    try:
        yield sink
    finally:
        sink.stop()


def _setup(tmp_path: Path, sink: NextHopSink, cache_url: str = "memory://") -> tuple[Path, int]:
    (tmp_path / "lists").mkdir(exist_ok=True)
    (tmp_path / "lists" / "vip.txt").write_text("# VIPs\nboss@example.com\n")
    (tmp_path / "rules.yaml").write_text(RULES)
    port = free_port()
    config = tmp_path / f"gateway-{port}.toml"
    config.write_text(
        f"[smtp]\nlisten = '127.0.0.1:{port}'\n"
        f"[downstream]\nurl = 'smtp://127.0.0.1:{sink.port}'\n"
        "[classifier]\nprovider = 'emulator'\n"
        f"[cache]\nurl = '{cache_url}'\n"
        "[rules]\nfiles = ['rules.yaml']\n",
        encoding="utf-8",
    )
    return config, port


def _send(port: int, sender: str, text: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(sender, ["info@example.com"], text.encode())


def _by_id(sink: NextHopSink, message_id: str) -> ReceivedMessage:
    def match(m: ReceivedMessage) -> bool:
        return m.header("Message-ID") == message_id

    return sink.wait_for(1, where=match, timeout=30)[0]


def _reply(conversation: str) -> str:
    thread = (
        f"In-Reply-To: <{conversation}@example.org>\r\nReferences: <{conversation}@example.org>\r\n"
    )
    return REFUND_REPLY.format(id=conversation, thread=thread)


def test_serve_reply_follows_its_conversation_lists_reload_and_headers_are_removed(
    tmp_path: Path, sink: NextHopSink
) -> None:
    """Invoice -> ap@; its refund reply -> ap@ too (alone a refund goes to refunds@);
    X-Spam-Flag removed (both instances); VIP from the list file, and a new VIP written
    into the list file while serving counts after the reload; X-Half is the UTC half."""
    config, port = _setup(tmp_path, sink)
    proc = start_serve(tmp_path, "--config", str(config))
    try:
        read_until(proc, "listening on")
        before = datetime.now(UTC).hour < 12
        _send(port, "boss@example.com", INVOICE.format(id="conv1"))
        first = _by_id(sink, "<conv1@example.org>")
        after = datetime.now(UTC).hour < 12
        _send(port, "carol@example.org", _reply("conv1"))
        reply = _by_id(sink, "<conv1-reply@example.org>")
        alone = REFUND_REPLY.format(id="alone", thread="")
        _send(port, "carol@example.org", alone)
        lone = _by_id(sink, "<alone-reply@example.org>")

        # Written while serving: picked up by the file poll (2 s), like a rule file.
        (tmp_path / "lists" / "vip.txt").write_text("boss@example.com\ncarol@example.org\n")
        deadline = time.monotonic() + 30
        vip_now: ReceivedMessage | None = None
        attempt = 0
        while vip_now is None and time.monotonic() < deadline:
            attempt += 1
            _send(port, "carol@example.org", INVOICE.format(id=f"later{attempt}"))
            got = _by_id(sink, f"<later{attempt}@example.org>")
            if got.header("X-VIP") == "yes":
                vip_now = got
            else:
                time.sleep(0.5)
    finally:
        code, stderr = stop_serve(proc)
    assert code == 0
    assert first.rcpt_tos == ("ap@example.com",)
    assert first.header("X-Queue") == "ap"
    assert first.headers("X-Spam-Flag") == []
    assert b"x-spam-flag:" not in first.data.lower()
    assert first.header("X-VIP") == "yes"
    if before == after:
        assert first.header("X-Half") == ("am" if before else "pm")
    assert reply.rcpt_tos == ("ap@example.com",)
    assert reply.header("X-Queue") == "ap-thread"
    assert "conversation-stays-with-ap" in (reply.header("X-CM-Rules") or "")
    assert "Finance > Refund" in (reply.header("X-CM-Labels") or "")
    assert lone.rcpt_tos == ("refunds@example.com",)
    assert lone.header("X-VIP") is None
    assert vip_now is not None, "the list file change was not picked up"
    assert "rules_reloaded" in stderr


def test_serve_instances_sharing_redis_share_the_conversation(
    tmp_path: Path, sink: NextHopSink, redis_server: RedisServer
) -> None:
    """Two gateways on one Redis: the invoice goes through the first, its refund reply
    through the second, and the reply still follows the conversation to ap@."""
    redis_server.flush()
    procs = []
    try:
        ports = []
        for name in ("a", "b"):
            directory = tmp_path / name
            directory.mkdir()
            config, port = _setup(directory, sink, redis_server.url)
            proc = start_serve(directory, "--config", str(config))
            procs.append(proc)
            read_until(proc, "listening on")
            ports.append(port)
        _send(ports[0], "carol@example.org", INVOICE.format(id="shared"))
        first = _by_id(sink, "<shared@example.org>")
        _send(ports[1], "carol@example.org", _reply("shared"))
        reply = _by_id(sink, "<shared-reply@example.org>")
        stored = redis_server.client().keys("cm-gateway:thread:*")
    finally:
        for proc in procs:
            stop_serve(proc)
    assert first.rcpt_tos == ("ap@example.com",)
    assert reply.rcpt_tos == ("ap@example.com",)
    assert reply.header("X-Queue") == "ap-thread"
    assert stored, "nothing remembered in Redis"


async def test_redis_thread_memory_is_shared_and_a_redis_that_is_down_recalls_nothing(
    redis_server: RedisServer,
) -> None:
    """Two clients see one memory (sets under cm-gateway:thread:, with the TTL); with
    Redis unreachable, recall answers nothing at once and remember is a no-op."""
    from gateway.classify._cache_redis import THREAD_PREFIX, RedisCache

    redis_server.flush()
    one = RedisCache(redis_server.url, ttl=600)
    two = RedisCache(redis_server.url, ttl=600)
    try:
        await one.remember(["root@x", "me@x"], ["queue-it", "vip"])
        await two.remember(["root@x"], ["queue-hr"])
        assert await two.recall(["root@x"]) == {"queue-it", "vip", "queue-hr"}
        assert await one.recall(["me@x", "nobody@x"]) == {"queue-it", "vip"}
        keys = redis_server.client().keys(THREAD_PREFIX + "*")
        assert len(keys) == 2
        assert all(0 < redis_server.client().ttl(k) <= 600 for k in keys)
    finally:
        await one.aclose()
        await two.aclose()
    down = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl=600, timeout=0.2)
    try:
        started = time.monotonic()
        assert await down.recall(["root@x"]) == frozenset()
        await down.remember(["root@x"], ["x"])
        assert time.monotonic() - started < 2
        assert down.errors >= 1
    finally:
        await down.aclose()
