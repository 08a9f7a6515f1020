"""The milter front's robustness and process life: hostile packets, a client that stops
or falls silent, shutdown, unix sockets, and serve with the milter front only (batches
across connections, metrics by front)."""

from __future__ import annotations

import asyncio
import struct
import subprocess
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.milter import MilterServer
from gateway.milter import _codec as c
from gateway.milter._session import reply_packet
from gateway.ops import Service
from gateway.pipeline import InboundMessage, MessageEdits
from gateway.replies import Reply

from .milter_support import Edits, milter_client
from .pipeline_support import mail, make_config
from .serve_support import free_port, read_until, start_serve, stop_serve
from .test_milter_front import INVOICE, PLAIN, running_milter


def test_reply_text_percent_is_doubled() -> None:
    packet = reply_packet(Reply(550, "5.7.1", "50% off"))
    assert packet[5:] == b"550 5.7.1 50%% off\0"


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 0),  # zero length
        struct.pack(">I", 1 << 30) + b"O",  # oversize length
        c.pack(b"Z", b"what"),  # unknown command
        c.pack(c.Cmd.OPTNEG, b"\0\0\0\2"),  # short negotiation
        c.pack(c.Cmd.OPTNEG, struct.pack(">III", 2, 0x1FF, 0)),  # protocol 2
        c.pack(c.Cmd.MAIL, b"<a@b>\0"),  # before negotiation
        struct.pack(">I", 100) + b"Mhalf",  # stream ends inside a packet
    ],
)
async def test_hostile_packets_end_the_connection_and_the_server_keeps_serving(
    tmp_path: Path, garbage: bytes
) -> None:
    async with running_milter(tmp_path) as (server, _):
        host, port = server.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(garbage)
        await writer.drain()
        if garbage.endswith(b"Mhalf"):
            writer.write_eof()
        async with asyncio.timeout(5):
            assert await reader.read() in (b"",)  # closed, nothing answered
        writer.close()
        assert server.sessions == {} or await _drained(server)
        async with milter_client(server.address) as mta:
            await mta.connect()
            edits = await mta.message("a@example.com", ["support@example.com"], PLAIN)
        assert edits.final == c.Resp.CONTINUE


async def _drained(server: MilterServer) -> bool:
    for _ in range(50):
        if not server.sessions:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_client_that_stops_mid_message_leaves_no_session_behind(tmp_path: Path) -> None:
    async with running_milter(tmp_path) as (server, _):
        async with milter_client(server.address) as mta:
            await mta.connect()
            await mta.step(c.Cmd.MAIL, b"<a@example.com>\0", c.NR_MAIL)
            await mta.step(c.Cmd.HEADER, b"Subject\0 half\0", c.NR_HDR)
        assert await _drained(server)


async def test_concurrent_milter_sessions_are_classified_in_batches_under_serve(
    tmp_path: Path,
) -> None:
    """`serve` with the SMTP front off and the milter front on: 8 MTA connections at once
    share batches (batch size > 1), and the messages are counted under front="milter"."""
    cfg = make_config(
        tmp_path,
        downstream=f"maildir://{tmp_path}/unused",
        smtp={"listen": ""},
        milter={"listen": "127.0.0.1:0"},
        classifier={"provider": "emulator", "max_wait_ms": 300},
        metrics={"listen": ""},
    )
    service = Service(cfg)
    await service.start()
    try:

        async def one_session(i: int) -> Edits:
            async with milter_client(service.milter_address) as mta:
                await mta.connect()
                body = f"Please find invoice {i} attached, amount due {i} EUR."
                return await mta.message("a@example.com", ["b@example.com"], mail(f"Inv {i}", body))

        results = await asyncio.gather(*(one_session(i) for i in range(8)))
    finally:
        await service.drain()
    assert all(r.final == c.Resp.CONTINUE for r in results)
    registry = service.metrics.registry
    batches = registry.get_sample_value("cm_gateway_batch_size_count") or 0
    documents = registry.get_sample_value("cm_gateway_batch_size_sum") or 0
    assert documents == 8 and batches < 8, (documents, batches)
    milter = {"front": "milter", "outcome": "delivered"}
    assert registry.get_sample_value("cm_gateway_front_messages_total", milter) == 8
    assert (
        registry.get_sample_value(
            "cm_gateway_front_messages_total", {"front": "smtp", "outcome": "delivered"}
        )
        is None
    )


def test_a_config_with_neither_front_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to serve"):
        make_config(tmp_path, downstream="maildir:///tmp/x", smtp={"listen": ""})


async def test_unix_socket_listen_serves_and_removes_its_socket(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    path.write_text("stale")  # left by a previous run: replaced
    async with running_milter(tmp_path) as (_, pipeline):
        server = MilterServer(f"unix:{path}", pipeline, buffer_limit=100_000, timeout=5)
        await server.start()
        try:
            async with milter_client(f"unix:{path}") as mta:
                await mta.connect()
                edits = await mta.message("a@example.com", ["support@example.com"], INVOICE)
        finally:
            await server.aclose(grace=1)
    assert edits.added_rcpts == ["<ap@example.com>"]
    assert not path.exists()


async def test_shutdown_lets_a_message_being_decided_finish(tmp_path: Path) -> None:
    started = asyncio.Event()

    class Slow:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            started.set()
            await asyncio.sleep(0.5)
            return MessageEdits(verdict="deliver", headers=(("X-CM-Status", "classified"),))

    server = MilterServer("127.0.0.1:0", Slow(), buffer_limit=1000, timeout=5)
    await server.start()
    async with milter_client(server.address) as mta, milter_client(server.address) as idle:
        await mta.connect()
        await idle.connect()
        sending = asyncio.create_task(mta.message("a@example.com", ["b@example.com"], PLAIN))
        await started.wait()
        async with asyncio.timeout(3):  # not the whole grace: the session ends after its answer
            await server.aclose(grace=5)
        edits = await sending
        assert await idle.reader.read() == b""  # the idle connection was closed
    assert edits.final == c.Resp.CONTINUE
    assert [n for _, n, _ in edits.inserted] == ["X-CM-Status"]


async def test_a_silent_connection_is_closed_after_the_milter_timeout(tmp_path: Path) -> None:
    class Never:
        async def decide(self, msg: InboundMessage) -> MessageEdits:
            raise AssertionError("no message was sent")

    server = MilterServer("127.0.0.1:0", Never(), buffer_limit=1000, timeout=0.5)
    await server.start()
    try:
        async with milter_client(server.address) as mta:
            await mta.connect()
            await mta.step(c.Cmd.MAIL, b"<a@example.com>\0", c.NR_MAIL)
            async with asyncio.timeout(5):
                assert await mta.reader.read() == b""
        assert await _drained(server)
    finally:
        await server.aclose(grace=1)


async def test_serve_with_two_workers_shares_the_milter_port(tmp_path: Path) -> None:
    """`cm-gateway serve` with the SMTP front off, the milter front on and two workers
    (SO_REUSEPORT): it says where it listens and both workers answer the MTA."""
    port = free_port()
    (tmp_path / "gw.toml").write_text(
        '[smtp]\nlisten = ""\nworkers = 2\n'
        f'[milter]\nlisten = "127.0.0.1:{port}"\n'
        '[classifier]\nprovider = "emulator"\n'
        f'[downstream]\nurl = "maildir://{tmp_path}/md"\n'
        '[metrics]\nlisten = ""\n',
        encoding="utf-8",
    )
    proc = start_serve(tmp_path, "--config", str(tmp_path / "gw.toml"), stderr=subprocess.DEVNULL)
    try:
        lines = await asyncio.to_thread(read_until, proc, "cm-gateway listening on")
        assert lines[-1] == f"cm-gateway listening on 127.0.0.1:{port} (2 workers)"
        for _ in range(4):  # whichever worker the kernel picks
            async with asyncio.timeout(60):
                while True:
                    try:
                        async with milter_client(f"127.0.0.1:{port}") as mta:
                            await mta.connect()
                            edits = await mta.message("a@example.com", ["b@example.com"], INVOICE)
                        break
                    except (ConnectionError, AssertionError, asyncio.IncompleteReadError):
                        await asyncio.sleep(0.2)  # a worker not listening yet
            assert edits.final == c.Resp.CONTINUE
            assert [n for _, n, _ in edits.inserted][:1] == ["X-CM-Labels"]
    finally:
        code, _ = await asyncio.to_thread(stop_serve, proc)
    assert code == 0
