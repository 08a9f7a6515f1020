"""The dedup cache in a real redis-server, shared by two gateway pipelines; billing is
read from the HTTP emulator's own ledger, mail from a real SMTP sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway import replies
from gateway.classify import DedupClassifier, MemoryCache, make_classifier
from gateway.classify._cache_redis import KEY_PREFIX, RedisCache, redis_key
from gateway.classify._dedup import TieredCache
from gateway.classify._stack import build_cache, build_classifier_stack
from gateway.mail import header_fields
from gateway.pipeline import build_processor
from gateway.pipeline._pipeline import Pipeline
from gateway.predictions import DocumentPrediction, Label, ModelInfo
from gateway.testing import EmulatorHandle, NextHopSink, free_port, running_sink

from .pipeline_support import inbound, mail, make_config
from .redis_support import RedisServer, redis_server, running_redis

pytestmark = pytest.mark.emulator(reset=True, token_env="REINFER_TOKEN")

__all__ = ["redis_server"]  # the fixture, imported for pytest

PASSWORD = "s3cret-redis-pass"
ENTRY = (
    DocumentPrediction(labels=(Label(name=("Finance", "Invoice"), probability=0.9),)),
    ModelInfo(version=7),
)


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The module's redis-server, running and empty."""
    redis_server.flush()
    return redis_server


def pipeline(tmp_path: Path, sink: NextHopSink, emu: EmulatorHandle, cache_url: str) -> Pipeline:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = make_config(
        tmp_path,
        downstream=sink.url,
        classifier={
            "provider": "communications-mining",
            "base_url": emu.base_url,
            "project": emu.project,
            "dataset": emu.dataset,
            "timeout": 5.0,
        },
        cache={"url": cache_url},
    )
    classifier = build_classifier_stack(config, make_classifier(config))
    return build_processor(config, classifier=classifier)


def shared_cache(p: Pipeline) -> RedisCache:
    assert isinstance(p.classifier, DedupClassifier)
    tiered = p.classifier.cache
    assert isinstance(tiered, TieredCache) and isinstance(tiered.shared, RedisCache)
    return tiered.shared


def status(content: bytes) -> list[str]:
    return [v for n, v in header_fields(content) if n.lower() == "x-cm-status"]


def labels(content: bytes) -> list[str]:
    return [v for n, v in header_fields(content) if n.lower() == "x-cm-labels"]


async def test_two_instances_sharing_redis_bill_a_message_once(
    tmp_path: Path, emu: EmulatorHandle, redis: RedisServer
) -> None:
    """The same message sent to instance 1 then instance 2 is billed once; both deliver it
    classified with the same labels."""
    msg = mail("Invoice INV-55555", "Please pay the invoice, amount 200 EUR.")
    with running_sink() as sink:
        one = pipeline(tmp_path / "a", sink, emu, redis.url)
        two = pipeline(tmp_path / "b", sink, emu, redis.url)
        try:
            first = await one.process(inbound(msg))
            second = await two.process(inbound(msg))
        finally:
            await one.aclose()
            await two.aclose()
    assert first == second == replies.queued("4QTEST1")
    assert emu.stats()["documents_billed"] == 1
    assert [status(r.content) for r in sink.received] == [["classified"], ["classified"]]
    first_labels, second_labels = (labels(r.content) for r in sink.received)
    assert first_labels == second_labels and "Finance > Invoice" in first_labels[0]


async def test_redis_going_down_mid_run_still_delivers_every_message_classified(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """Redis killed after three messages: the next three are still classified and
    delivered; one rate-limited warning, without the password, says why."""
    messages = [mail(f"Invoice INV-1000{i}", f"Invoice number {i} is due.") for i in range(6)]
    with running_redis(tmp_path / "redis", password=PASSWORD) as server, running_sink() as sink:
        p = pipeline(tmp_path / "gw", sink, emu, server.url)
        try:
            with capture_logs() as logs:
                got = [await p.process(inbound(m)) for m in messages[:3]]
                server.stop()
                got += [await p.process(inbound(m)) for m in messages[3:]]
            cache = shared_cache(p)
        finally:
            await p.aclose()
    assert got == [replies.queued("4QTEST1")] * 6
    assert [status(r.content) for r in sink.received] == [["classified"]] * 6
    assert emu.stats()["documents_billed"] == 6
    assert cache.errors >= 1
    warnings = [e for e in logs if e["event"] == "cache_unavailable"]
    assert len(warnings) == 1
    assert PASSWORD not in repr(logs)


async def test_after_redis_went_down_a_retry_to_the_same_instance_is_not_billed_again(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """The local tier answers a retried message while Redis is down."""
    msg = mail("Refund please", "I want a refund for order ORD-123456.")
    with running_redis(tmp_path / "redis") as server, running_sink() as sink:
        p = pipeline(tmp_path / "gw", sink, emu, server.url)
        try:
            await p.process(inbound(msg))
            server.stop()
            again = await p.process(inbound(msg))
        finally:
            await p.aclose()
    assert again == replies.queued("4QTEST1")
    assert emu.stats()["documents_billed"] == 1


async def test_entries_are_json_under_the_prefix_with_the_cache_ttl(redis: RedisServer) -> None:
    """``SET ... EX ttl`` under ``cm-gateway:dedup:<sha256>``; the value is readable JSON
    of the prediction and the model, and reads back equal."""
    cache = RedisCache(redis.url, ttl=120)
    try:
        await cache.put("<m1@example.com>:abc", ENTRY)
        back = await cache.get("<m1@example.com>:abc")
        missing = await cache.get("<m2@example.com>:abc")
    finally:
        await cache.aclose()
    assert back == ENTRY and missing is None
    with redis.client() as c:
        keys = [k.decode() for k in c.keys("*")]
        assert keys == [redis_key("<m1@example.com>:abc")]
        assert keys[0].startswith(KEY_PREFIX) and len(keys[0]) == len(KEY_PREFIX) + 64
        assert 0 < c.ttl(keys[0]) <= 120
        stored: Any = json.loads(c.get(keys[0]) or b"")
    assert stored["prediction"]["labels"][0]["name"] == ["Finance", "Invoice"]
    assert stored["model"]["version"] == 7


async def test_an_unreadable_entry_is_a_miss(redis: RedisServer) -> None:
    """Garbage under a key (another version, a hand edit) is counted and read as a miss."""
    with redis.client() as c:
        c.set(redis_key("k"), b"{not json")
        c.set(redis_key("k2"), json.dumps({"v": 999}))
    cache = RedisCache(redis.url, ttl=60)
    try:
        assert await cache.get("k") is None
        assert await cache.get("k2") is None
    finally:
        await cache.aclose()
    assert cache.errors == 2
    assert cache.available  # a bad entry is not an outage


async def test_unreachable_redis_is_a_miss_then_a_pause_without_connecting() -> None:
    """Nobody listening: the first call fails fast into a miss, later calls skip Redis
    during the pause instead of trying again for every message."""
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl=60)
    try:
        assert await cache.get("k") is None
        await cache.put("k", ENTRY)
        assert await cache.get("k") is None
    finally:
        await cache.aclose()
    assert (cache.errors, cache.skipped) == (1, 2)
    assert not cache.available


async def test_wrong_password_is_a_miss_and_the_password_is_never_logged(
    tmp_path: Path,
) -> None:
    """An authentication error is an outage like any other; neither the configured
    password nor the URL appears in the log."""
    with running_redis(tmp_path, password=PASSWORD) as server:
        url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0"
        cache = RedisCache(url, ttl=60)
        try:
            with capture_logs() as logs:
                assert await cache.get("k") is None
        finally:
            await cache.aclose()
    assert cache.errors == 1
    assert [e["event"] for e in logs] == ["cache_unavailable"]
    assert PASSWORD not in repr(logs)
    assert logs[0]["backend"] == f"redis://127.0.0.1:{server.port}"


def test_cache_url_chooses_the_backend(tmp_path: Path) -> None:
    """``memory://`` is a process-local LRU; ``redis://`` is Redis behind a local tier."""
    memory = build_cache(make_config(tmp_path, downstream="smtp://127.0.0.1:1"))
    assert isinstance(memory, MemoryCache)
    shared = build_cache(
        make_config(tmp_path, downstream="smtp://127.0.0.1:1", cache={"url": "redis://h:1/2"})
    )
    assert isinstance(shared, TieredCache) and isinstance(shared.shared, RedisCache)
    assert shared.shared.description == "redis://h:1"
