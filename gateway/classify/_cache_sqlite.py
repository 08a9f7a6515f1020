"""The dedup cache in a local SQLite file, so that a restart or a SIGKILL does not empty it.

``[cache] url = "sqlite:///var/lib/cm-gateway/dedup.db"`` (an absolute path after the
third slash; ``sqlite://relative/path`` is relative to the working directory). A message
that the sending MTA retries after the gateway was killed or restarted is then answered
from the file instead of going to the API again; ``memory://`` forgets everything at a
restart. Several processes of one host may share the file (SQLite locks it); instances on
several hosts need Redis.

The file is opened in WAL mode with ``synchronous = NORMAL``: a committed entry survives
the process being killed (only a crash of the host may lose the last ones, which costs a
second API call, never a message). Entries expire after ``[cache] ttl`` (wall clock, so
across restarts); past ``max_entries`` the ones closest to expiring go first. Keys are
SHA-256 of the dedup key (it carries a sender-chosen Message-ID).

Like every cache here it is an optimisation: any SQLite error (a locked, full, or
corrupt file) answers "miss" or skips the write, and logs one rate-limited
``cache_unavailable`` warning. Calls are synchronous: an indexed read or a small write
of a local file takes tens of microseconds, less than a thread hop would.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

from gateway.logsetup import get_logger

from ._dedup import CacheEntry, _pack, _unpack

__all__ = ["SqliteCache", "sqlite_path"]

_log = get_logger("cm-gateway.cache")
# Expired and surplus entries are pruned every this many writes.
PRUNE_EVERY = 1000
_WARN_EVERY = 60.0  # seconds between two cache_unavailable warnings


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite://`` URL names (``sqlite:///abs`` or ``sqlite://rel``)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not (parts.netloc or parts.path):
        raise ValueError(f"not a sqlite:// URL: {url!r}")
    return Path(parts.netloc + parts.path)


class SqliteCache:
    """A ``PredictionCache`` in one SQLite file (see the module's docstring)."""

    def __init__(self, url: str, *, ttl: float, max_entries: int) -> None:
        self.path = sqlite_path(url)
        self._ttl = ttl
        self._max = max_entries
        self._db: sqlite3.Connection | None = None
        self._writes = 0
        self._warned = float("-inf")
        self.errors = 0

    @property
    def description(self) -> str:
        return f"sqlite ({self.path.name})"

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=0.05, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS dedup"
                " (key TEXT PRIMARY KEY, expires REAL NOT NULL, entry BLOB NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS dedup_expires ON dedup (expires)")
            self._db = db
        return self._db

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            _log.warning("cache_unavailable", backend="sqlite", error=type(exc).__name__)
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            self._close()  # a corrupt file: reopened (and probably failing) next time

    async def get(self, key: str) -> CacheEntry | None:
        """The live entry under ``key``, else None (absent, expired or unreadable)."""
        try:
            row = (
                self._open()
                .execute("SELECT expires, entry FROM dedup WHERE key = ?", (_hash(key),))
                .fetchone()
            )
            if row is None or row[0] < time.time():
                return None
            return _unpack(row[1])
        except Exception as exc:  # a cache never breaks the mail path
            self._failed(exc)
            return None

    async def put(self, key: str, entry: CacheEntry) -> None:
        """Store ``entry`` for the TTL; prune now and then."""
        try:
            db = self._open()
            db.execute(
                "INSERT OR REPLACE INTO dedup (key, expires, entry) VALUES (?, ?, ?)",
                (_hash(key), time.time() + self._ttl, _pack(entry)),
            )
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                self.prune()
        except Exception as exc:
            self._failed(exc)

    def prune(self) -> None:
        """Drop expired entries, then the ones closest to expiring past ``max_entries``."""
        db = self._open()
        db.execute("DELETE FROM dedup WHERE expires < ?", (time.time(),))
        (count,) = db.execute("SELECT COUNT(*) FROM dedup").fetchone()
        if count > self._max:
            db.execute(
                "DELETE FROM dedup WHERE key IN (SELECT key FROM dedup ORDER BY expires LIMIT ?)",
                (count - self._max,),
            )

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    async def aclose(self) -> None:
        """Close the file."""
        self._close()


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
