"""The dedup cache in Redis, so that several gateway instances bill a message once.

``[cache] url = "redis://[:password@]host:port/db"`` (or ``rediss://`` for TLS). Each entry
is the JSON of one document's prediction and the model that made it, stored with
``SET ... EX <cache.ttl>`` under ``cm-gateway:dedup:<sha256 of the dedup key>``: the key
is hashed because it carries a sender-chosen Message-ID (unbounded length, personal data).

Redis is an optimisation, never a dependency of the mail path. Every call is bounded by
a short timeout; a failure (refused, timeout, error reply, unreadable entry) counts in
``errors``, logs one rate-limited ``cache_unavailable`` warning without the URL, and
answers "miss", so the message is classified as if there were no cache. After a failure
the backend is left alone for a growing pause (``backoff``) instead of making every
message wait for the same timeout again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.logsetup import get_logger
from gateway.predictions import DocumentPrediction, ModelInfo
from gateway.redact import register_secret, scrub

from ._dedup import CacheEntry
from ._threads import thread_digest

__all__ = [
    "KEY_PREFIX",
    "THREAD_PREFIX",
    "RedisCache",
    "decode_entry",
    "encode_entry",
    "redis_key",
]

KEY_PREFIX = "cm-gateway:dedup:"
# Conversation memory (thread: {matched: RULE}): one set of rule names per thread id.
THREAD_PREFIX = "cm-gateway:thread:"
_FORMAT = 1  # bumped when the JSON shape changes: older entries then read as misses
_LOG_EVERY = 30.0  # seconds between two cache_unavailable warnings

_log = get_logger("cm-gateway.cache")


def redis_key(key: str) -> str:
    """The Redis key of a dedup key; every instance computes the same one."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return KEY_PREFIX + digest


def encode_entry(entry: CacheEntry) -> bytes:
    """The JSON stored for one prediction and its model."""
    prediction, model = entry
    data = {
        "v": _FORMAT,
        "prediction": prediction.model_dump(mode="json"),
        "model": None if model is None else model.model_dump(mode="json"),
    }
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def decode_entry(raw: bytes | str) -> CacheEntry:
    """The entry ``encode_entry`` wrote; ``ValueError`` for anything else."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != _FORMAT:
            raise ValueError("unknown cache entry format")
        prediction = DocumentPrediction.model_validate(data["prediction"])
        model = None if data["model"] is None else ModelInfo.model_validate(data["model"])
    except (KeyError, TypeError, ValidationError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable cache entry: {type(exc).__name__}") from None
    return prediction, model


class RedisCache:
    """A ``_dedup.PredictionCache`` in Redis, shared by every instance using ``url``."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        timeout: float = 0.25,
        max_connections: int = 16,
        backoff: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        parts = urlsplit(url)
        register_secret(parts.password)  # any echo of the URL in a log line is scrubbed
        self._where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"
        self._ttl = max(1, int(ttl))
        self._timeout = timeout
        # The socket timeouts bound each step (pool wait, connect, read); this bounds
        # the whole call. redis-py drops a connection whose command was cancelled.
        self._deadline = 2 * timeout
        self._backoff_min, self._backoff_max = backoff
        self._pause = 0.0
        self._down_until = 0.0
        self._last_log = float("-inf")
        self._quiet = 0
        # No retries inside redis-py (its default backs off for seconds): our caller is
        # a message waiting for its reply, and a miss costs only a classification.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._client: aioredis.Redis = aioredis.Redis.from_pool(self._pool)
        self.errors = 0
        self.skipped = 0

    @property
    def description(self) -> str:
        """Scheme, host and port: never the password."""
        return self._where

    @property
    def available(self) -> bool:
        """False during the pause after a failure."""
        return time.monotonic() >= self._down_until

    async def get(self, key: str) -> CacheEntry | None:
        """The shared entry, or None when absent or Redis cannot answer in time."""
        if not self._usable():
            return None
        try:
            async with asyncio.timeout(self._deadline):
                raw = await self._client.get(redis_key(key))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        self._succeeded()
        if raw is None:
            return None
        try:
            return decode_entry(raw)
        except ValueError as exc:
            self._failed("decode", exc, pause=False)
            return None

    async def put(self, key: str, entry: CacheEntry) -> None:
        """Store for ``ttl`` seconds; a failure is logged and forgotten."""
        if not self._usable():
            return
        try:
            async with asyncio.timeout(self._deadline):
                await self._client.set(redis_key(key), encode_entry(entry), ex=self._ttl)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("put", exc)
            return
        self._succeeded()

    async def recall(self, thread_ids: Sequence[str]) -> frozenset[str]:
        """The rules remembered under any of ``thread_ids`` (``ThreadMemory``)."""
        if not thread_ids or not self._usable():
            return frozenset()
        keys = [THREAD_PREFIX + thread_digest(t) for t in thread_ids]
        try:
            async with asyncio.timeout(self._deadline):
                members = await self._client.sunion(keys)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("recall", exc)
            return frozenset()
        self._succeeded()
        return frozenset(
            m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m) for m in members
        )

    async def remember(self, thread_ids: Sequence[str], rules: Iterable[str]) -> None:
        """Add ``rules`` to each thread's set, for ``ttl`` seconds (``ThreadMemory``)."""
        names = sorted(set(rules))
        if not names or not thread_ids or not self._usable():
            return
        try:
            async with asyncio.timeout(self._deadline):
                async with self._client.pipeline(transaction=False) as pipe:
                    for thread_id in thread_ids:
                        key = THREAD_PREFIX + thread_digest(thread_id)
                        pipe.sadd(key, *names)
                        pipe.expire(key, self._ttl)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("remember", exc)
            return
        self._succeeded()

    async def ping(self) -> bool:
        """True when Redis answers PING within the timeout (for readiness and tests)."""
        try:
            async with asyncio.timeout(self._deadline):
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        """Close the connections."""
        try:
            await self._client.aclose()
            await self._pool.disconnect()
        except (RedisError, OSError):
            pass

    def _usable(self) -> bool:
        if self.available:
            return True
        self.skipped += 1
        return False

    def _succeeded(self) -> None:
        self._pause = 0.0

    def _failed(self, op: str, exc: BaseException, *, pause: bool = True) -> None:
        self.errors += 1
        if pause:
            self._pause = min(self._backoff_max, max(self._backoff_min, self._pause * 2))
            self._down_until = time.monotonic() + self._pause
        now = time.monotonic()
        if now - self._last_log < _LOG_EVERY:
            self._quiet += 1
            return
        fields: dict[str, Any] = {
            "backend": self._where,
            "op": op,
            "error": type(exc).__name__,
            "detail": scrub(str(exc))[:200],
            "errors_total": self.errors,
            "suppressed": self._quiet,
        }
        if pause:
            fields["retry_in_s"] = self._pause
        _log.warning("cache_unavailable", **fields)
        self._last_log = now
        self._quiet = 0
