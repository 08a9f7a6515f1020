"""The SQLite dedup cache (``[cache] url = "sqlite:///..."``): what survives a restart and
a SIGKILL, what expires, what stays bounded, and that a broken file is only a miss."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.classify._cache_sqlite import SqliteCache, sqlite_path

from .test_dedup_memory import ENTRIES

ENTRY = ENTRIES[0]


def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/cache/dedup.db"


def test_urls_name_absolute_and_relative_files() -> None:
    assert sqlite_path("sqlite:///var/lib/cm/dedup.db") == Path("/var/lib/cm/dedup.db")
    assert sqlite_path("sqlite://var/dedup.db") == Path("var/dedup.db")
    with pytest.raises(ValueError):
        sqlite_path("sqlite://")


async def test_an_entry_outlives_the_process_that_stored_it(tmp_path: Path) -> None:
    first = SqliteCache(url(tmp_path), ttl=60, max_entries=10)
    await first.put("m1@example.com:abc", ENTRY)
    await first.aclose()
    again = SqliteCache(url(tmp_path), ttl=60, max_entries=10)
    assert await again.get("m1@example.com:abc") == ENTRY
    assert await again.get("m2@example.com:abc") is None
    await again.aclose()


def test_an_entry_survives_a_sigkill_right_after_the_write(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from gateway.classify._cache_sqlite import SqliteCache
        from tests.unit.test_dedup_memory import ENTRIES
        cache = SqliteCache({url(tmp_path)!r}, ttl=60, max_entries=10)
        asyncio.run(cache.put("killed:abc", ENTRIES[0]))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert done.returncode == -signal.SIGKILL
    cache = SqliteCache(url(tmp_path), ttl=60, max_entries=10)
    assert asyncio.run(cache.get("killed:abc")) == ENTRY


async def test_an_expired_entry_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = SqliteCache(url(tmp_path), ttl=60, max_entries=10)
    await cache.put("k", ENTRY)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert await cache.get("k") is None


async def test_pruning_keeps_at_most_max_entries_the_newest_first(tmp_path: Path) -> None:
    cache = SqliteCache(url(tmp_path), ttl=60, max_entries=3)
    for i in range(6):
        await cache.put(f"k{i}", ENTRY)
    cache.prune()
    kept = [i for i in range(6) if await cache.get(f"k{i}") is not None]
    assert kept == [3, 4, 5]


async def test_a_corrupt_file_is_a_miss_and_a_skipped_write(tmp_path: Path) -> None:
    path = sqlite_path(url(tmp_path))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    cache = SqliteCache(url(tmp_path), ttl=60, max_entries=10)
    assert await cache.get("k") is None
    await cache.put("k", ENTRY)  # no exception
    assert cache.errors >= 2


async def test_a_file_that_cannot_be_created_is_only_a_miss(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    cache = SqliteCache(f"sqlite://{tmp_path}/a-file/sub/dedup.db", ttl=60, max_entries=10)
    await cache.put("k", ENTRY)
    assert await cache.get("k") is None
    assert cache.errors == 2
