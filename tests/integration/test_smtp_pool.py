"""The downstream SMTP connection pool over real sockets: a real aiosmtpd next hop that
counts connections and logs each command (gateway.testing.NextHopSink)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from gateway import replies
from gateway.config import load_config
from gateway.deliver import make_delivery
from gateway.deliver._delivery import SmtpDelivery
from gateway.deliver._result import DeliveryResult
from gateway.testing import NextHopSink, SinkBehaviour, running_sink

CONTENT = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:  # the predicate reads another thread's state: nothing to await
            if predicate():
                return
            await asyncio.sleep(0.02)


def delivery(
    sink: NextHopSink, pool_size: int, *, idle_timeout: float = 30.0, check_after: float = 5.0
) -> SmtpDelivery:
    return SmtpDelivery(
        "127.0.0.1",
        sink.port,
        timeout=20.0,  # generous: this machine is slow and shared
        local_hostname="gw.test",
        pool_size=pool_size,
        idle_timeout=idle_timeout,
        check_after=check_after,
    )


async def send(d: SmtpDelivery, i: int = 0) -> DeliveryResult:
    return await d.deliver("a@example.com", [f"b{i}@example.com"], CONTENT)


async def test_fifty_messages_open_at_most_pool_size_connections_and_rset_between() -> None:
    """50 concurrent messages through a pool of 4: every one delivered over at most 4
    connections, with one RSET before each reuse of a connection."""
    with running_sink() as sink:
        d = delivery(sink, 4)
        results = await asyncio.gather(*(send(d, i) for i in range(50)))
        stats = d.pool.stats()
        await d.aclose()
    assert all(r.delivered for r in results)
    assert len(sink.received) == 50
    assert 1 <= sink.connections <= 4
    assert sink.count("EHLO") == sink.connections
    assert sink.count("RSET") == 50 - sink.connections == stats["reused"]
    assert stats["created"] == sink.connections and stats["discarded"] == 0


async def test_a_reused_connection_gets_rset_before_its_next_transaction() -> None:
    """One connection, three messages: EHLO once, RSET between transactions, QUIT at
    close."""
    with running_sink() as sink:
        d = delivery(sink, 1)
        for i in range(3):
            assert (await send(d, i)).delivered
        await d.aclose()
        await wait_until(lambda: sink.count("QUIT") == 1)
    transaction = ["MAIL", "RCPT", "DATA"]
    assert list(sink.commands.values()) == [
        ["EHLO", *transaction, "RSET", *transaction, "RSET", *transaction, "QUIT"]
    ]


async def test_a_connection_idle_past_check_after_gets_a_noop_first() -> None:
    """Reuse after a long idle: NOOP (health check), then RSET."""
    with running_sink() as sink:
        d = delivery(sink, 1, check_after=0.0)
        await send(d)
        await asyncio.sleep(0.05)
        await send(d)
        await d.aclose()
    (verbs,) = sink.commands.values()
    assert verbs[4:6] == ["NOOP", "RSET"]


async def test_next_hop_hanging_up_between_messages_costs_no_message() -> None:
    """The next hop closes every connection after its reply to DATA: each message still
    gets 250, each on a fresh connection."""
    with running_sink(SinkBehaviour(hang_up_after_data=True)) as sink:
        d = delivery(sink, 2)
        results = [await send(d, i) for i in range(3)]
        stats = d.pool.stats()
        await d.aclose()
    assert [r.reply.code for r in results] == [250, 250, 250]
    assert len(sink.received) == 3
    assert sink.connections == 3 and stats["reused"] == 0


async def test_connection_dying_at_rset_is_replaced_without_a_4xx() -> None:
    """A pooled connection that breaks at RSET is discarded and the message goes out on
    a fresh connection, once."""
    with running_sink(SinkBehaviour(die_at_rset=True)) as sink:
        d = delivery(sink, 1)
        first = await send(d, 1)
        second = await send(d, 2)
        stats = d.pool.stats()
        await d.aclose()
    assert first.delivered and second.delivered
    assert len(sink.received) == 2 and sink.count("DATA") == 2
    assert sink.connections == 2
    assert stats["discarded"] == 1


async def test_421_to_mail_from_on_a_reused_connection_is_retried_once_on_a_fresh_one() -> None:
    """MAIL FROM answered 421 on a reused connection: nothing was delivered, so the
    message is sent once more on a new connection, and the client hears 250."""
    with running_sink(SinkBehaviour(mail_421_on_reuse=True)) as sink:
        d = delivery(sink, 1)
        first = await send(d, 1)
        second = await send(d, 2)
        stats = d.pool.stats()
        await d.aclose()
    assert first.delivered and second.delivered
    assert sink.count("MAIL") == 3 and sink.count("DATA") == 2
    assert len(sink.received) == 2 and sink.connections == 2
    assert stats["discarded"] == 1 and stats["created"] == 2


async def test_421_to_data_discards_the_connection_and_is_never_resent() -> None:
    """DATA answered 421: 451 to our client (its MTA retries), no second DATA; the next
    message goes over a new connection."""
    with running_sink(SinkBehaviour(data_421_once=True)) as sink:
        d = delivery(sink, 1)
        first = await send(d, 1)
        second = await send(d, 2)
        stats = d.pool.stats()
        await d.aclose()
    assert first.reply == replies.DOWNSTREAM_TEMPFAIL
    assert first.next_hop is not None and first.next_hop.code == 421
    assert second.delivered
    assert sink.count("DATA") == 2 and len(sink.received) == 1
    assert sink.connections == 2 and stats["discarded"] == 1


async def test_pool_size_holds_under_one_hundred_concurrent_deliveries() -> None:
    """100 deliveries at once through a pool of 3 against a slow next hop: never more
    than 3 connections open at the next hop, and all 100 delivered."""
    with running_sink(SinkBehaviour(data_delay=0.02)) as sink:
        d = delivery(sink, 3)
        results = await asyncio.gather(*(send(d, i) for i in range(100)))
        open_after = d.pool.stats()["open"]
        await d.aclose()
    assert all(r.delivered for r in results)
    assert len(sink.received) == 100
    assert sink.peak_open <= 3 and sink.connections <= 3
    assert open_after <= 3


async def test_idle_connections_past_the_limit_are_closed_with_quit() -> None:
    """A connection idle longer than idle_timeout is QUIT by the pool on its own."""
    with running_sink() as sink:
        d = delivery(sink, 2, idle_timeout=0.2)
        await send(d)
        await wait_until(lambda: sink.count("QUIT") == 1)
        stats = d.pool.stats()
        await d.aclose()
    assert stats["open"] == 0 and stats["expired"] == 1


async def test_closing_the_pool_quits_every_idle_connection() -> None:
    """aclose(): each open connection gets QUIT; the next hop sees none left open."""
    with running_sink(SinkBehaviour(data_delay=0.1)) as sink:
        d = delivery(sink, 2)
        await asyncio.gather(send(d, 1), send(d, 2))
        assert d.pool.stats()["idle"] == 2
        await d.aclose()
        await wait_until(lambda: sink.open_now == 0)
    assert sink.count("QUIT") == 2
    assert d.pool.stats()["open"] == 0


async def test_next_hop_refusal_discards_the_connection() -> None:
    """Every recipient refused: the 5xx is passed on and that connection is not reused."""
    with running_sink(
        SinkBehaviour(refuse={"nobody@example.com": "550 5.1.1 No such user"})
    ) as sink:
        d = delivery(sink, 1)
        refused = await d.deliver("a@example.com", ["nobody@example.com"], CONTENT)
        ok = await send(d)
        stats = d.pool.stats()
        await d.aclose()
    assert refused.reply.code == 550 and ok.delivered
    assert stats["reused"] == 0 and sink.connections == 2


def test_make_delivery_uses_downstream_pool_size(tmp_path: Path) -> None:
    """``[downstream] pool_size`` sizes the pool."""
    config = load_config(
        None,
        env={
            "CM_GATEWAY_DOWNSTREAM_URL": "smtp://127.0.0.1:10026",
            "CM_GATEWAY_DOWNSTREAM_POOL_SIZE": "7",
        },
    )
    d = make_delivery(config)
    assert isinstance(d, SmtpDelivery) and d.pool.size == 7


async def test_a_delivery_cut_by_its_deadline_discards_its_connection() -> None:
    """A next hop slower than downstream.timeout: 451, and that connection is closed,
    not returned to the pool."""
    with running_sink(SinkBehaviour(data_delay=3.0)) as sink:
        d = SmtpDelivery("127.0.0.1", sink.port, timeout=0.5, pool_size=2)
        result = await send(d)
        stats = d.pool.stats()
        await d.aclose()
    assert result.reply == replies.DOWNSTREAM_TEMPFAIL
    assert stats["discarded"] == 1 and stats["open"] == 0 and stats["idle"] == 0
