"""Reading the files a user hands us (config, rules, users, taxonomy, predictions)."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ConfigError

__all__ = ["read_text"]


def read_text(path: str | Path, *, error: type[ConfigError] = ConfigError) -> str:
    """The file's UTF-8 text; an unreadable or non-UTF-8 file raises ``error`` naming it
    (``ConfigError`` by default, so the CLI exits 2)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    except UnicodeDecodeError:
        raise error("not UTF-8 text", file=str(path)) from None
